"""bench plugin: protosim."""
