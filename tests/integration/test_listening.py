"""Per-process listening sockets (recobra.web.listening) on the real kernel: what the
supervisor holds, what a server process receives, and how connections spread."""

from __future__ import annotations

import errno
import pickle
import socket
from multiprocessing.reduction import ForkingPickler

import pytest

from recobra.web.listening import PortHold, hold_port, spreads_connections

pytestmark = pytest.mark.skipif(not spreads_connections(), reason="needs SO_REUSEPORT's spreading (Linux)")


def sent_to_a_server_process(held: PortHold) -> socket.socket:
    """``held`` as a server process receives it: pickled by multiprocessing, unpickled there."""
    received = pickle.loads(bytes(ForkingPickler.dumps(held)))
    assert isinstance(received, socket.socket)
    return received


def test_a_server_process_gets_a_socket_of_its_own_on_the_held_port() -> None:
    with hold_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        assert port > 0
        with sent_to_a_server_process(held) as own:
            assert own.fileno() != held.fileno()
            assert not isinstance(own, PortHold)
            assert own.getsockname() == ("127.0.0.1", port)
            assert own.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert own.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0  # uvicorn listens


def test_connections_spread_over_the_processes_sockets_and_never_reach_the_hold() -> None:
    with hold_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        listeners = [sent_to_a_server_process(held) for _ in range(2)]
        for sock in listeners:
            sock.listen(128)
            sock.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        try:
            accepted = [0, 0]
            for i, sock in enumerate(listeners):
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    accepted[i] += 1
            # Every connection reached a server process's socket; the kernel hashes each
            # one's addresses, so 64 of them all landing on one socket has odds of 2**-63.
            assert sum(accepted) == 64
            assert min(accepted) >= 8, accepted
        finally:
            for sock in [*clients, *listeners]:
                sock.close()


def test_a_port_another_server_listens_on_is_refused_even_one_sharing_it() -> None:
    with hold_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with sent_to_a_server_process(held) as own:
            own.listen(8)
            with pytest.raises(OSError, match="in use") as refused:
                hold_port("127.0.0.1", port)
            assert refused.value.errno == errno.EADDRINUSE


def test_a_held_port_is_free_again_once_closed() -> None:
    held = hold_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    held.close()
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", port))
