"""systemd's notify protocol, for `Type=notify` units (layer 5).

Invariants: a no-op unless $NOTIFY_SOCKET is set; one datagram per call, never
blocking, and a failure to notify never stops the master. After a USR2 upgrade the new
master (not the unit's main pid, so the unit needs `NotifyAccess=all`) sends `MAINPID=`
with its own pid, so systemd follows the new master when the old one exits.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    __slots__ = ("_address",)

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + addr[1:] if addr.startswith("@") else addr

    def send(self, *fields: str) -> bool:
        if not self._address:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.sendto("\n".join(fields).encode(), self._address)
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")
