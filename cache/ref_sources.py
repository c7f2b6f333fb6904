"""The source behind a model reference (`refs.py`): resolved once, then downloaded with `download.py`.

Resolving turns the reference into an immutable revision (a Hub commit, a CivitAI version's file and sha256, a
URL's sha256) and a file list, written to `models/.refs/<folder>.json` before anything is downloaded. Every later
fetch of the same reference on this volume, by any worker, also after the model was evicted, reads that record and
makes no API request: the same reference always means the same bytes on a volume (`python -m cache rm` forgets it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from .catalog import Part
from .download import discard_partial, fetch_listed, file_sha256
from .errors import LayoutError, ModelNotFoundError, SourceError
from .files import Listing, RemoteFile
from .refs import ModelRef, parse_ref
from .remote import Remote, safe_url
from .safetensors_header import HeaderError, classify, read_header

if TYPE_CHECKING:
    from .lock import Progress

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
_CONFIG_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")
_PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class RefContext:
    """What a reference's source needs from the cache: the network settings and where resolutions are kept."""

    remote: Remote
    records_dir: Path


class RefSource:
    def __init__(self, part: Part, context: RefContext) -> None:
        self.part = part
        self.ref: ModelRef = parse_ref(part.ref)
        self.remote = context.remote
        self.record_path = context.records_dir / f"{self.ref.folder_name}.json"
        self._urls: dict[str, str] = {}

    def list(self) -> Listing:
        record = self._read_record()
        if record is None:
            record = self._resolve()
            _write_json(self.record_path, record)
            log.info("%s: resolved to %s", self.ref.text, record["revision"])
        files = {}
        for rel, info in record["files"].items():
            files[rel] = RemoteFile(size=info["size"], sha256=info.get("sha256"), git_oid=info.get("git_oid"))
            self._urls[rel] = info["url"]
        self._exact = record.get("exact_sizes", True)
        return Listing(record["revision"], files, origin=record["origin"], meta=dict(record.get("meta", {})))

    def fetch(self, dest: Path, listing: Listing | None, progress: Progress) -> Listing:
        assert listing is not None, "a reference is always listed first"
        files = fetch_listed(
            self.remote,
            dest,
            listing,
            self._urls,
            what=self.ref.text,
            check=progress.check,
            advance=progress.advance,
            token_for="CIVITAI_TOKEN" if self.ref.kind == "civitai" else "HF_TOKEN",
            exact_size=self._exact,
        )
        meta = dict(listing.meta)
        if self.ref.single_file:
            (rel,) = files
            meta.update(file=rel, kind=self._check_header(dest / rel))
            if files[rel].sha256 is None:
                files[rel] = RemoteFile(files[rel].size, file_sha256(dest / rel))
        if not self._exact or any(info.sha256 is None for info in listing.files.values()):
            self._pin_exact(files)
        return Listing(listing.revision, files, listing.origin, meta)

    def _check_header(self, path: Path) -> str:
        try:
            return classify(read_header(path))
        except HeaderError as err:
            path.unlink(missing_ok=True)
            discard_partial(path)
            raise LayoutError(f"{self.ref.text}: {path.name} {err}; it was not published") from None

    def _pin_exact(self, files: dict[str, RemoteFile]) -> None:
        """After the first download, record exact sizes and hashes: a later fetch must deliver these bytes."""
        record = self._read_record()
        if record is None:
            return
        for rel, info in files.items():
            record["files"][rel].update(
                size=info.size, sha256=info.sha256 or record["files"][rel].get("sha256")
            )
        record["exact_sizes"] = True
        _write_json(self.record_path, record)

    def _read_record(self) -> dict | None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("format") != RECORD_FORMAT or record.get("ref") != self.ref.text:
            return None
        return record

    def _resolve(self) -> dict:
        ref = self.ref
        if ref.kind in ("hf-repo", "hf-file"):
            revision, files, meta = _resolve_hub(self.remote, ref)
            origin = f"hub {self.remote.hf_endpoint}/{ref.repo_id}"
            exact = True
        elif ref.kind == "civitai":
            revision, files, meta = _resolve_civitai(self.remote, ref)
            origin = f"civitai {self.remote.civitai_api_url}/v1/model-versions/{ref.version_id}"
            exact = False
        else:
            revision, files = _resolve_url(self.remote, ref)
            origin = f"url {safe_url(ref.url or '')}"
            meta = {}
            exact = True
        return {
            "format": RECORD_FORMAT,
            "ref": ref.text,
            "revision": revision,
            "origin": origin,
            "files": files,
            "meta": meta,
            "exact_sizes": exact,
        }


def _resolve_hub(remote: Remote, ref: ModelRef) -> tuple[str, dict, dict]:
    base = remote.hf_endpoint
    repo = ref.repo_id or ""
    what = f"hf:{repo}"
    revision = ref.revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        info, _ = remote.get_json(
            f"{base}/api/models/{repo}/revision/{quote(revision, safe='')}", what, token_for="HF_TOKEN"
        )
        commit = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(commit, str):
            raise SourceError(f"{base} answered {what}@{revision} without a commit")
    folder = str(PurePosixPath(ref.path).parent) if ref.path else ""
    tree = _hub_tree(
        remote, f"{base}/api/models/{repo}/tree/{commit}", folder, recursive=ref.path is None, what=what
    )
    meta: dict[str, str] = {}
    if ref.path is not None:
        if ref.path not in tree:
            raise ModelNotFoundError(f"{ref.text}: {ref.path} is not in {repo} at commit {commit[:12]}")
        wanted = [ref.path]
    else:
        if "model_index.json" not in tree:
            raise ModelNotFoundError(
                f"{ref.text}: {repo} has no model_index.json at commit {commit[:12]}, so it is not a diffusers "
                "pipeline repo; name one file of it as hf:<owner>/<repo>/<file>.safetensors"
            )
        index, _ = remote.get_json(
            f"{base}/{repo}/resolve/{commit}/model_index.json", what, token_for="HF_TOKEN"
        )
        wanted = diffusers_files(ref.text, tree, index)
        # what the caller needs to know before the weights come: which pipeline the repo is (index is a dict now)
        meta["pipeline"] = str(index.get("_class_name") or "")

    def entry(path: str) -> dict:
        size, sha256, oid = tree[path]
        url = f"{base}/{repo}/resolve/{commit}/{quote(path)}"
        return {"size": size, "sha256": sha256, "git_oid": None if sha256 else oid, "url": url}

    return commit, {(PurePosixPath(p).name if ref.path else p): entry(p) for p in wanted}, meta


def _hub_tree(remote: Remote, url: str, folder: str, *, recursive: bool, what: str) -> dict:
    """path -> (size, lfs sha256, git oid) of the files under `folder`, following the API's pagination."""
    files = {}
    next_url: str | None = f"{url}/{quote(folder)}" if folder and folder != "." else url
    next_url += "?recursive=true" if recursive else ""
    while next_url:
        entries, response = remote.get_json(next_url, what, token_for="HF_TOKEN")
        if not isinstance(entries, list):
            raise SourceError(f"{what}: the Hub's file listing is not a list")
        for e in entries:
            if isinstance(e, dict) and e.get("type") == "file":
                lfs = e.get("lfs") or {}
                files[e["path"]] = (int(e["size"]), lfs.get("oid"), e.get("oid"))
        next_url = response.links.get("next", {}).get("url")
    return files


def diffusers_files(text: str, tree: dict, index: object) -> list[str]:
    """The files a diffusers pipeline loads from a repo: model_index.json and, per component folder, its configs
    and one set of `.safetensors` weights (the fp16 variant when there is one); never `.bin`, ONNX, Flax or the
    single-file checkpoints some repos also carry at the top."""
    if not isinstance(index, dict):
        raise ModelNotFoundError(f"{text}: model_index.json is not a JSON object")
    components = [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0]
    ]
    chosen = ["model_index.json"]
    for component in components:
        inside = [p for p in tree if p.startswith(f"{component}/") and p.count("/") == 1]
        weights = [p for p in inside if ".safetensors" in PurePosixPath(p).name]
        fp16 = [p for p in weights if ".fp16." in p or ".fp16-" in p or p.endswith(".index.fp16.json")]
        plain = [p for p in weights if p not in fp16]
        picked = fp16 or plain
        if not picked and any(p.endswith(_PICKLED) for p in inside):
            raise ModelNotFoundError(
                f"{text}: {component}/ has only pickled weights (.bin), which are never loaded; use a repo with "
                ".safetensors weights"
            )
        configs = [p for p in inside if p.endswith(_CONFIG_SUFFIXES) and ".safetensors" not in p]
        configs += [
            p for p in inside if "tokenizer" in component and not p.endswith((*_PICKLED, ".safetensors"))
        ]
        chosen += sorted(set(configs) | set(picked))
    return list(dict.fromkeys(chosen))


def _resolve_civitai(remote: Remote, ref: ModelRef) -> tuple[str, dict, dict]:
    what = ref.text
    data, _ = remote.get_json(
        f"{remote.civitai_api_url}/v1/model-versions/{ref.version_id}", what, token_for="CIVITAI_TOKEN"
    )
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise SourceError(f"{what}: CivitAI answered without a file list")
    candidates = [
        f for f in data["files"] if isinstance(f, dict) and str(f.get("name", "")).endswith(".safetensors")
    ]
    primary = [f for f in candidates if f.get("primary")] or [
        f for f in candidates if f.get("type") == "Model"
    ]
    if not primary:
        names = ", ".join(str(f.get("name")) for f in data["files"] if isinstance(f, dict)) or "none"
        raise ModelNotFoundError(
            f"{what} has no .safetensors file (files: {names}); pickled formats are never loaded"
        )
    chosen = primary[0]
    sha256 = str((chosen.get("hashes") or {}).get("SHA256") or "").lower() or None
    name = _file_name(str(chosen["name"]))
    size = round(float(chosen.get("sizeKB") or 0) * 1024)
    meta = {"baseModel": data.get("baseModel"), "type": (data.get("model") or {}).get("type")}
    files = {name: {"size": size, "sha256": sha256, "url": str(chosen.get("downloadUrl") or "")}}
    if not files[name]["url"]:
        raise SourceError(f"{what}: CivitAI lists {name} without a downloadUrl")
    return f"version {ref.version_id}" + (f" sha256 {sha256}" if sha256 else ""), {**files}, meta


def _resolve_url(remote: Remote, ref: ModelRef) -> tuple[str, dict]:
    url = ref.url or ""
    name = _file_name(unquote(PurePosixPath(urlsplit(url).path).name))
    # A one-byte range request learns the length (for the space check) without fetching the file.
    response = remote.open(url, ref.text, probe=True)
    with response:
        ranged = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        length = ranged[1] if ranged else response.headers.get("Content-Length")
    if not length:
        raise SourceError(f"{safe_url(url)} sent no Content-Length; only files of a known size are fetched")
    revision = f"sha256 {ref.sha256}" if ref.sha256 else f"url {safe_url(url)}"
    return revision, {name: {"size": int(length), "sha256": ref.sha256, "url": url}}


def _file_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model.safetensors"
    return cleaned if cleaned.endswith(".safetensors") else f"{cleaned}.safetensors"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
