"""Whether a connection reaches PostgreSQL itself, with nothing in between.

A pooler in transaction mode (PgBouncer before 1.21, or later ones without
``max_prepared_statements``) hands each transaction whichever server connection is free, so
session state, server-side prepared statements included, does not follow the client. The
worker prepares its statements only where it can prove there is no such pooler: the
server's view of the connection matches the client's socket.

- TCP: the server sees the same two endpoints as the client's socket. A pooler, proxy or
  NAT in between has a socket of its own towards the server, with other endpoints.
- Unix socket: the process listening on the socket (its peer credentials) is the parent of
  the server process answering, as PostgreSQL's postmaster is of every backend. A pooler
  listening on a socket is not.

Anything that cannot be checked (another platform, another process namespace) counts as
not direct: the price is speed, never correctness.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import psycopg

_SERVER_VIEW = """
SELECT pg_backend_pid(), host(inet_client_addr()), inet_client_port(),
       host(inet_server_addr()), inet_server_port()
"""

# struct ucred: pid, uid, gid.
_UCRED = struct.Struct("3i")


def reaches_postgres_directly(connection: psycopg.Connection) -> bool:
    """Whether ``connection`` is a session of the PostgreSQL server itself: no pooler or
    proxy relays it. Runs one query."""
    backend_pid, client_host, client_port, server_host, server_port = connection.execute(
        _SERVER_VIEW
    ).fetchone()
    try:
        with socket.socket(fileno=os.dup(connection.fileno())) as sock:
            if sock.family == socket.AF_UNIX:
                listener = _listener_pid(sock)
                return listener is not None and listener == _parent_pid(backend_pid)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                if client_host is None or server_host is None:
                    return False
                return _same_endpoint(sock.getsockname(), client_host, client_port) and (
                    _same_endpoint(sock.getpeername(), server_host, server_port)
                )
    except (OSError, ValueError):  # a socket or address this platform cannot read
        return False
    return False


def _same_endpoint(address: tuple, host: str, port: int) -> bool:
    return address[1] == port and _ip(address[0]) == _ip(host)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _listener_pid(sock: socket.socket) -> int | None:
    """The pid of the process that listens on the other end of a Unix socket, or None where
    the platform cannot tell."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    pid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))[0]
    # 0: the listener lives in a process namespace this one cannot see.
    return pid or None


def _parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` on this host, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read()
    except OSError:
        return None
    # "pid (command) state ppid ...": the command may hold spaces and parentheses.
    after_command = fields.rpartition(")")[2].split()
    try:
        return int(after_command[1])
    except (IndexError, ValueError):
        return None
