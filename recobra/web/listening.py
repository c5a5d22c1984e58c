"""One listening socket per server process, so the kernel spreads connections evenly.

uvicorn's supervisor binds one socket and hands it to every server process; they all
accept from it. Under a few long-lived connections (a load balancer's, an operator's
event forwarder, the ingestion benchmark's) that spreads badly: the event loop that
wakes first accepts every connection waiting (asyncio and uvloop accept in a loop) and
keeps them for good, so one process works flat out while the other idles. Seen with
``ss``: 30 of 32 connections on one of two processes.

On Linux, each process instead binds its own socket to the same address with
``SO_REUSEPORT``, and the kernel hands every new connection to one of the listening
sockets by a hash of its addresses. The supervisor keeps a socket bound to the port,
which holds it (and resolves port 0) but never listens, so it is given no
connections. A server process's socket joins the group when its server starts
listening, after the application is built and warmed up: connections never wait on a
process that is still starting.

Elsewhere (no ``SO_REUSEPORT``, or one that does not spread connections, as on macOS)
the processes share one socket, as uvicorn does by default.
"""

from __future__ import annotations

import socket
import sys
from typing import Any


def spreads_connections() -> bool:
    """Whether this system spreads connections over sockets sharing a port (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class PortHold(socket.socket):
    """The supervisor's socket: bound with ``SO_REUSEPORT``, never listening. Sent to a
    server process (multiprocessing pickles it), it arrives as a new socket of that
    process's own, bound to the same address and ready for uvicorn to listen on."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_bound, (self.family, self.getsockname()))


def hold_port(host: str, port: int) -> PortHold:
    """A ``PortHold`` on ``host``:``port`` (``port`` 0: a free port, read back from
    ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # First without SO_REUSEPORT, which fails if anything listens on the port, another
    # Recobra server sharing it included: a second server started on the same port by
    # mistake must be refused, not quietly given half of the first one's connections.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    sock = PortHold(family, socket.SOCK_STREAM)
    try:
        _share_port(sock)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _bound(family: int, address: tuple[Any, ...]) -> socket.socket:
    """In a server process: its own socket, bound to the supervisor's address."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    _share_port(sock)
    sock.bind(address)
    return sock


def _share_port(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
