"""The chunk-level scheduler service."""
