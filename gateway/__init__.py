"""Gateway node: authenticates Socket.IO clients and relays Redis traffic to them."""
