"""`gradest gaussian` commands (being built)."""
