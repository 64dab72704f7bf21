"""bench plugin: wavelet."""
