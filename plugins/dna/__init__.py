"""bench plugin: dna."""
