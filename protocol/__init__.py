"""Sans-IO messages between peers and the supernode, and the chunk frames."""
