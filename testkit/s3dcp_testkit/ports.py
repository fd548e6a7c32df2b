"""Free TCP ports on 127.0.0.1, for servers that must be told their port before they bind it."""

from __future__ import annotations

import socket
from collections.abc import Container


def free_ports(count: int, avoid: Container[int] = ()) -> list[int]:
    """Distinct ports on 127.0.0.1 that the kernel hands out for port 0, none of them in ``avoid``.

    Each is free when picked; a server that binds port 0 itself needs none of
    this, and there is no race.
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count and len(sockets) < 100 + count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)  # held open until all are picked, so they differ
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    if len(ports) < count:
        raise OSError("no free ports on 127.0.0.1")
    return ports


def free_port() -> int:
    """One free port on 127.0.0.1 (nothing listens on it once this returns)."""
    return free_ports(1)[0]
