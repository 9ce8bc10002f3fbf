"""The daemon's local API: JSON lines over a Unix socket."""
