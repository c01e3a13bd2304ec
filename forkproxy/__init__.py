"""forkproxy: a prefork reverse proxy for HTTP/1.1 and WebSocket on raw sockets."""

__version__ = "0.1.0"
