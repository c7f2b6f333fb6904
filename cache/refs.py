"""Model references a job or the CLI may name, and which of them a job may use.

    hf:<owner>/<repo>[@<revision>]                          a diffusers-layout repo (the files a pipeline loads)
    hf:<owner>/<repo>/<path/in/repo>.safetensors[@<rev>]    one file of a repo
    civitai:<model version id>                              CivitAI's primary .safetensors of that version
    https://<host>/<...>/<name>.safetensors[#sha256=<hex>]  a plain URL (http:// only with ALLOW_PRIVATE_URLS)

Each reference has its own folder under models/, named from the reference text alone, so finding a published one
needs no request; the immutable revision it resolved to is recorded on the volume (see `ref_sources.py`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

RefKind = Literal["hf-repo", "hf-file", "civitai", "url"]
PREFIXES = ("hf:", "civitai:", "https://", "http://")
WEIGHTS_SUFFIX = ".safetensors"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HF = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:/(?P<path>[^@]+))?(?:@(?P<rev>[A-Za-z0-9._/-]+))?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class RefError(ValueError):
    """A reference that cannot be parsed or is not allowed; the message says why, without server paths."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. `text` is its canonical form (what the folder name and the manifest derive from)."""

    text: str
    kind: RefKind
    repo_id: str | None = None
    path: str | None = None
    revision: str | None = None
    version_id: str | None = None
    url: str | None = None
    sha256: str | None = None

    @property
    def single_file(self) -> bool:
        return self.kind != "hf-repo"

    @property
    def host(self) -> str | None:
        return urlsplit(self.url).hostname if self.url else None

    @property
    def folder_name(self) -> str:
        """The model's folder under models/: readable, and unique per reference."""
        body = self.text.split(":", 1)[1].lstrip("/")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", body).strip("-.")[:48].rstrip("-.")
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:10]
        return f"ref-{self.kind}-{slug}-{digest}"


def is_ref(text: str) -> bool:
    """Whether `text` is meant as a reference (as opposed to a catalog name or a path on the volume)."""
    return text.strip().lower().startswith(PREFIXES)


def parse_ref(text: str) -> ModelRef:
    """The reference `text` names; RefError says what is wrong with it."""
    raw = text.strip()
    scheme, _, rest = raw.partition(":")
    scheme = scheme.lower()
    if scheme == "hf":
        return _parse_hf(rest)
    if scheme == "civitai":
        if not rest.isdigit():
            raise RefError(f"{raw!r}: expected civitai:<model version id> (digits)")
        return ModelRef(f"civitai:{int(rest)}", "civitai", version_id=str(int(rest)))
    if scheme in ("https", "http"):
        return _parse_url(raw)
    raise RefError(
        f"{raw!r}: expected hf:<owner>/<repo>[/<file>.safetensors][@rev], civitai:<id> or https://…"
    )


def _parse_hf(rest: str) -> ModelRef:
    match = _HF.fullmatch(rest)
    if match is None:
        raise RefError(f"'hf:{rest}': expected hf:<owner>/<repo>[/<path>.safetensors][@<revision>]")
    repo, path, revision = match["repo"], match["path"], match["rev"]
    suffix = f"@{revision}" if revision else ""
    if path is None:
        return ModelRef(f"hf:{repo}{suffix}", "hf-repo", repo_id=repo, revision=revision)
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or not path.endswith(WEIGHTS_SUFFIX):
        raise RefError(f"'hf:{rest}': a file in a repo must be a {WEIGHTS_SUFFIX} path inside it")
    return ModelRef(f"hf:{repo}/{path}{suffix}", "hf-file", repo_id=repo, path=path, revision=revision)


def _parse_url(raw: str) -> ModelRef:
    parts = urlsplit(raw)
    if not parts.hostname:
        raise RefError(f"{raw!r}: the URL has no host")
    if parts.username or parts.password:
        raise RefError("the URL carries credentials: set CIVITAI_TOKEN or HF_TOKEN instead")
    if parts.query:
        # a query is where download tokens and signatures go: they would end up in logs and folder names
        raise RefError("the URL has a query string: name the file without one (tokens go in CIVITAI_TOKEN)")
    if not parts.path.endswith(WEIGHTS_SUFFIX):
        raise RefError(
            f"{parts.scheme}://{parts.hostname}{parts.path}: only {WEIGHTS_SUFFIX} files are loaded"
        )
    sha256 = None
    if parts.fragment:
        key, _, value = parts.fragment.partition("=")
        if key != "sha256" or not _SHA256.fullmatch(value.lower()):
            raise RefError("the URL's fragment must be #sha256=<64 hex digits>")
        sha256 = value.lower()
    url = parts._replace(fragment="").geturl()
    text = f"{url}#sha256={sha256}" if sha256 else url
    return ModelRef(text, "url", url=url, sha256=sha256)


def source_problem(ref: ModelRef, sources: tuple[str, ...]) -> str | None:
    """Why MODEL_SOURCES does not let a job name `ref`, or None when it does.

    Entries are kinds (`hf`, `civitai`) or, for plain URLs, host names (`example.com`, `*.example.com`).
    """
    if ref.kind in ("hf-repo", "hf-file"):
        return None if "hf" in sources else "hf: references are not enabled (MODEL_SOURCES)"
    if ref.kind == "civitai":
        return None if "civitai" in sources else "civitai: references are not enabled (MODEL_SOURCES)"
    host = (ref.host or "").lower()
    for entry in sources:
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return None
    return f"downloads from {host} are not enabled (MODEL_SOURCES lists the hosts plain URLs may name)"
