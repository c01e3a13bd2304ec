"""Sans-I/O HTTP/1.1: bytes in, heads and body framing out. No sockets, config or time."""
