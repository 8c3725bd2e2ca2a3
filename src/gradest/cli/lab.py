"""`gradest lab` commands (being built)."""
