"""`gradest vae` commands (being built)."""
