"""The read-only FUSE filesystem over a RAFS bootstrap (comes with the lazy-loading issue)."""
