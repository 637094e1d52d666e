"""A byte relay in front of the test database, as any proxy or pooler is: clients connect to
it, and it opens a connection of its own to the server for each."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path


def _server_address(host: str, port: int) -> tuple[int, str | tuple[str, int]]:
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host or "127.0.0.1", port)


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def relay(host: str, port: int, *, socket_dir: Path | None = None) -> Iterator[tuple[str, int]]:
    """Relay to the server at ``host`` (an address or a socket directory) and ``port``; yields
    the host and port to connect to instead: a Unix socket in ``socket_dir`` if given, else a
    TCP port on 127.0.0.1."""
    family, server = _server_address(host, port)
    if socket_dir is None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address = ("127.0.0.1", listener.getsockname()[1])
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_dir / f".s.PGSQL.{port}"))
        address = (str(socket_dir), port)
    listener.listen()
    opened: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the relay is done
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.connect(server)
            opened.extend((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, target), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield address
    finally:
        # shutdown() wakes a thread blocked in accept(); close() alone may not.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
