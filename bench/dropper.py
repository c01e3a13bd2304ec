"""Make peers vanish honestly: drop every packet of some loopback TCP ports.

A killed process still sends FIN or RST, so a dead peer is emulated by silence: a
firewall rule drops packets to and from the peer's ports. nftables first (a table of our
own, deleted whole on exit), iptables as a fallback (each rule deleted on exit). Needs
root; `unavailable()` says what is missing (apt-get install nftables).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from types import TracebackType

from .procs import which


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "dropping packets needs root"
    if not which("nft") and not which("iptables"):
        return "nft missing (apt-get install nftables)"
    return None


class PacketDrop:
    """Context manager: while inside, packets from or to `ports` on loopback are dropped."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = sorted(set(ports))
        self.table = f"forkproxy_bench_{os.getpid()}"
        self.rules: list[list[str]] = []
        self.nft = which("nft")

    def __enter__(self) -> PacketDrop:
        ports = ", ".join(map(str, self.ports))
        if self.nft:
            script = (f"table inet {self.table} {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n"
                      f"  iif lo tcp sport {{ {ports} }} drop\n  iif lo tcp dport {{ {ports} }} drop\n }}\n}}\n")
            subprocess.run([self.nft, "-f", "-"], input=script, text=True, check=True, capture_output=True)
            return self
        ipt = which("iptables") or "iptables"
        for port in self.ports:
            for flag in ("--sport", "--dport"):
                rule = ["INPUT", "-i", "lo", "-p", "tcp", flag, str(port), "-j", "DROP"]
                subprocess.run([ipt, "-I", *rule], check=True, capture_output=True)
                self.rules.append(rule)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.nft:
            subprocess.run([self.nft, "delete", "table", "inet", self.table], capture_output=True)
            return
        ipt = which("iptables") or "iptables"
        for rule in self.rules:
            subprocess.run([ipt, "-D", *rule], capture_output=True)
