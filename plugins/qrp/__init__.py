"""bench plugin: qrp."""
