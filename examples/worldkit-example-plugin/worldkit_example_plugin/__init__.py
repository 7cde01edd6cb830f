"""An example third-party worldkit plugin package (see README.md)."""
