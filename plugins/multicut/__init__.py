"""bench plugin: multicut."""
