"""dynams.v1 protocol (generated)."""
