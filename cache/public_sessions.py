"""requests sessions whose every connection is checked where it lands: the socket's peer address must be public.

`Remote.check_host` refuses a host that resolves to a private or loopback address, with a clear message, before a
request; but the connection resolves the name again, and a name that answers a public address to the check and a
private one to the connect (DNS rebinding) would get through. Checking the connected socket's peer address, before
a byte is sent on it, closes that gap whatever the resolver answers.
"""

from __future__ import annotations

import socket

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

from .addresses import is_public_address


class PrivateAddressError(NewConnectionError):
    """A connection landed on a private, loopback or otherwise non-public address; it was closed unused."""


def _checked(connection: HTTPConnection, sock: socket.socket) -> socket.socket:
    address = sock.getpeername()[0]
    if not is_public_address(address):
        sock.close()
        raise PrivateAddressError(
            connection, f"{connection.host} connected to {address}, a private or loopback address"
        )
    return sock


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _checked(self, super()._new_conn())


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _checked(self, super()._new_conn())


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def public_session() -> requests.Session:
    """A session that connects to public addresses only (and reads no credentials or proxies from the
    environment: ~/.netrc would send credentials to any host)."""
    session = requests.Session()
    session.trust_env = False
    adapter = _PublicAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def refused_private(error: requests.RequestException) -> str | None:
    """The reason, when a requests error is a connection refused by the public-address check (requests wraps it
    as ConnectionError(MaxRetryError(reason=PrivateAddressError)))."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return str(reason).split(": ", 1)[-1] if isinstance(reason, PrivateAddressError) else None
