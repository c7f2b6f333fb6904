"""HTTP for on-demand models: tokens only for their own host, redirects followed by hand, private hosts refused.

`requests` would strip an Authorization header on a redirect to another host, but it would still follow redirects
to any address; following them here lets every hop be checked (scheme, private address) and keeps the rule about
tokens in one visible place. Without ALLOW_PRIVATE_URLS every connection is also checked where it lands
(`public_sessions.py`), so a name that resolves differently at the connect gets no further. URLs are logged and
recorded without their query (signed CDN URLs carry secrets).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from .addresses import is_public_address
from .errors import AccessDeniedError, ModelNotFoundError, RevisionNotFoundError, SourceError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

_MAX_REDIRECTS = 8
_TIMEOUT = (15.0, 60.0)  # connect, read (between two chunks)


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    variable: str  # the environment variable it came from, for error messages


@dataclass(frozen=True)
class Remote:
    """Where the on-demand sources are and how to reach them. Tokens are keyed by host ("host:port" if any)."""

    hf_endpoint: str = "https://huggingface.co"
    civitai_api_url: str = "https://civitai.com/api"
    tokens: dict[str, Token] = field(default_factory=dict, repr=False)
    allow_private: bool = False

    @classmethod
    def build(
        cls,
        *,
        hf_endpoint: str,
        hf_token: str | None,
        civitai_api_url: str,
        civitai_token: str | None,
        allow_private: bool,
    ) -> Remote:
        tokens = {}
        if hf_token:
            tokens[_netloc(hf_endpoint)] = Token(hf_token, "HF_TOKEN")
        if civitai_token:
            tokens[_netloc(civitai_api_url)] = Token(civitai_token, "CIVITAI_TOKEN")
        return cls(hf_endpoint, civitai_api_url, tokens, allow_private)

    def token_hint(self, url: str, variable: str) -> str:
        return f"{variable} is set" if _netloc(url) in self.tokens else f"no {variable} is set"

    def open(
        self,
        url: str,
        what: str,
        *,
        start: int = 0,
        if_range: str | None = None,
        token_for: str = "",
        probe: bool = False,
    ) -> requests.Response:
        """GET `url` (from byte `start`), following redirects; the open, streaming response of the last hop.

        `probe` asks for the first byte only (the length is in Content-Range). The token of the first URL's host is sent to that host only. 401/403/404 become AccessDeniedError and
        ModelNotFoundError naming `what`; other failures SourceError.
        """
        import requests

        from .public_sessions import refused_private

        session = _session(public_only=not self.allow_private)
        current = url
        for _ in range(_MAX_REDIRECTS):
            self.check_host(current, what)
            headers = {"Accept-Encoding": "identity"}
            if (token := self.tokens.get(_netloc(current))) is not None:
                headers["Authorization"] = f"Bearer {token.value}"
            if probe:
                headers["Range"] = "bytes=0-0"
            elif start:
                headers["Range"] = f"bytes={start}-"
                if if_range:
                    headers["If-Range"] = if_range
            try:
                response = session.get(
                    current, headers=headers, stream=True, allow_redirects=False, timeout=_TIMEOUT
                )
            except requests.RequestException as err:
                if (refused := refused_private(err)) is not None:
                    raise SourceError(f"{what}: {refused} (allowed with ALLOW_PRIVATE_URLS)") from None
                raise SourceError(
                    f"cannot reach {safe_url(current)} for {what}: {type(err).__name__}"
                ) from None
            if response.is_redirect and response.headers.get("Location"):
                current = urljoin(current, response.headers["Location"])
                response.close()
                log.debug("%s: redirected to %s", what, safe_url(current))
                continue
            if response.status_code >= 400:
                response.close()
                raise self._http_error(response, current, what, token_for)
            return response
        raise SourceError(f"{what}: more than {_MAX_REDIRECTS} redirects from {safe_url(url)}")

    def get_json(self, url: str, what: str, *, token_for: str = "") -> tuple[object, requests.Response]:
        response = self.open(url, what, token_for=token_for)
        try:
            return response.json(), response
        except ValueError:
            raise SourceError(f"{safe_url(url)} answered {what} with something other than JSON") from None
        finally:
            response.close()

    def check_host(self, url: str, what: str) -> None:
        """Refuse schemes other than https (http too with ALLOW_PRIVATE_URLS) and private or loopback hosts."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise SourceError(f"{what}: {safe_url(url)} is not an http(s) URL")
        if self.allow_private:
            return
        if parts.scheme != "https":
            raise SourceError(f"{what}: {safe_url(url)} is not https (plain http needs ALLOW_PRIVATE_URLS)")
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError:
            raise SourceError(f"{what}: cannot resolve {parts.hostname}") from None
        for info in infos:
            if not is_public_address(info[4][0]):
                raise SourceError(
                    f"{what}: {parts.hostname} is a private or loopback address (allowed with ALLOW_PRIVATE_URLS)"
                )

    def _http_error(self, response: requests.Response, url: str, what: str, token_for: str) -> Exception:
        status = response.status_code
        code = response.headers.get("X-Error-Code", "")
        where = safe_url(url)
        if status in (401, 403) or code == "GatedRepo":
            hint = f" ({self.token_hint(url, token_for)})" if token_for else ""
            extra = f": set {token_for} to a token with access" if token_for else ""
            return AccessDeniedError(f"{where} refused {what} ({status}{hint}){extra}")
        if code == "RevisionNotFound":
            return RevisionNotFoundError(f"{what}: revision not found at {where}")
        if status == 404:
            return ModelNotFoundError(f"{what}: not found at {where} (404)")
        return SourceError(f"{where} failed for {what} ({status}); retry later")


def safe_url(url: str) -> str:
    """`url` without query and fragment: what may be logged or written down."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2].lower()


_SESSIONS: dict[tuple[int, bool], requests.Session] = {}


def _session(*, public_only: bool) -> requests.Session:
    """One connection pool per thread (requests' Session is not thread-safe) and rule."""
    import threading

    import requests

    from .public_sessions import public_session

    key = (threading.get_ident(), public_only)
    if key not in _SESSIONS:
        if public_only:
            _SESSIONS[key] = public_session()
        else:
            session = requests.Session()
            # credentials from ~/.netrc would go to any host (and proxies too): tokens come only from our settings
            session.trust_env = False
            _SESSIONS[key] = session
    return _SESSIONS[key]
