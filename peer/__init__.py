"""The peer daemon, dfget and the mesh fetcher (comes with the peer-mesh issue)."""
