"""`python -m cache`: fetch, pre-seed and inspect the models on the volume.

    python -m cache fetch REF [--timeout S]       hf:owner/repo[/file.safetensors][@rev], civitai:ID, https://…
    python -m cache ensure REPO_ID|CATALOG_NAME [--revision REV] [--name NAME] [--allow GLOB]... [--timeout S]
    python -m cache warm [--jobs music,image,...]  (also PREFETCH_MODELS)
    python -m cache status [--json]
    python -m cache ls [--json]
    python -m cache rm NAME|REF
    python -m cache prune [--max-gb N]
    python -m cache seed CATALOG_NAME --from DIR

Every command also takes --profile, --timeout, --lease-s and --models-dir, before or after its name.

`fetch`, `ensure` and `seed` print the model's local path as the last line on stdout; logs go to stderr. Paths
come from VOLUME_ROOT (see docs/DESIGN.md); the other settings from the environment (cache/cache_settings.py). The
exit status is 0 on success, 1 when the model could not be provided, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from . import catalog, inventory
from .cache_settings import CacheSettings, ConfigError
from .catalog import ModelSpec, Part, Profile
from .errors import CacheError
from .inventory import ModelEntry
from .lock import human_bytes
from .model_cache import ModelCache, ModelStatus
from .volume import resolve_volume


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = CacheSettings.from_env()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per HTTP request would drown the cache's own progress lines.
    for noisy in ("httpx2", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The volume's HF_HOME and TMPDIR must be in place before huggingface_hub is first imported.
    volume = resolve_volume(settings.volume_root)
    try:
        volume.configure_environment()
    except OSError as err:
        print(f"error: cannot prepare the volume at {volume.root}: {err}", file=sys.stderr)
        return 1
    if args.lease_s:
        settings = replace(settings, cache_lease_s=args.lease_s)
    cache = ModelCache.from_settings(args.models_dir or volume.models_dir, settings)
    timeout = args.timeout if args.timeout is not None else settings.cache_wait_timeout_s
    profile: Profile = args.profile or ("tiny" if settings.model_profile == "tiny" else "production")
    try:
        if args.command == "fetch":
            print(cache.fetch(args.ref, timeout))
        elif args.command == "ensure":
            print(cache.ensure(_spec_for(args, profile), timeout))
        elif args.command == "seed":
            print(cache.seed(catalog.get(args.name, profile), args.source, timeout))
        elif args.command == "warm":
            jobs = (
                [j.strip() for j in args.jobs.split(",") if j.strip()] if args.jobs else settings.worker_jobs
            )
            deadline = time.monotonic() + timeout
            specs = catalog.for_jobs(jobs, profile, settings.image_models, settings.music_models)
            for name, path in cache.warm(specs, timeout).items():
                print(f"{name}\t{path}")
            remaining = max(deadline - time.monotonic(), 0.0)
            for ref, path in cache.prefetch(settings.prefetch_models, remaining).items():
                print(f"{ref}\t{path}")
        elif args.command == "ls":
            _print_entries(inventory.entries(cache), as_json=args.json)
        elif args.command == "rm":
            print(f"removed {inventory.remove(cache, args.model)}")
        elif args.command == "prune":
            budget = args.max_gb if args.max_gb is not None else settings.cache_max_gb
            if budget is None:
                print("error: give --max-gb or set CACHE_MAX_GB", file=sys.stderr)
                return 2
            evicted = inventory.prune(cache, int(budget * 1e9))
            print(f"evicted {len(evicted)} model(s)" + "".join(f"\n{name}" for name in evicted))
        else:
            specs = [catalog.get(name, p) for name in catalog.names() for p in catalog.PROFILES]
            _print_status(cache.status(specs), as_json=args.json)
    except (CacheError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0


def _spec_for(args: argparse.Namespace, profile: Profile) -> ModelSpec:
    ad_hoc = args.revision or args.name or args.allow or args.ignore
    if "/" not in args.model and args.model in catalog.names() and not ad_hoc:
        return catalog.get(args.model, profile)
    part = Part(
        kind="hub",
        repo_id=args.model,
        revision=args.revision or "main",
        allow_patterns=tuple(args.allow) if args.allow else None,
        ignore_patterns=tuple(args.ignore) if args.ignore else None,
    )
    return ModelSpec(name=args.name or args.model.replace("/", "--"), parts=(part,))


def _print_status(statuses: list[ModelStatus], *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps([{**asdict(s), "path": str(s.path) if s.path else None} for s in statuses], indent=1)
        )
        return
    print(f"{'MODEL':<20} {'STATE':<9} {'SIZE':>9}  {'REVISION':<14} DETAIL")
    for s in statuses:
        revision = ",".join(r[:12] for r in s.revisions.values()) or "-"
        detail = [s.problem] if s.problem and s.state != "complete" else []
        if s.holder:
            detail.append(f"locked by {s.holder}")
        if s.staged_bytes:
            detail.append(f"{human_bytes(s.staged_bytes)} in staging")
        if s.path:
            detail.append(str(s.path))
        print(f"{s.name:<20} {s.state:<9} {human_bytes(s.size_bytes):>9}  {revision:<14} {'; '.join(detail)}")


def _print_entries(entries: list[ModelEntry], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{**asdict(e), "path": str(e.path)} for e in entries], indent=1))
        return
    print(f"{'MODEL':<52} {'SIZE':>9}  {'LAST USE':<16} {'PINNED':<6} {'IN USE':<6} SOURCE")
    for e in entries:
        used = datetime.fromtimestamp(e.last_used, UTC).strftime("%Y-%m-%d %H:%M") if e.last_used else "-"
        in_use = ",".join(e.in_use) or "no"
        pinned = "yes" if e.pinned else "no"
        print(f"{e.name:<52} {human_bytes(e.size_bytes):>9}  {used:<16} {pinned:<6} {in_use:<6} {e.source}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cache", description="The model cache on the network volume."
    )
    _add_common_options(parser, default=None)
    # The same options after the command name as well (`ensure REPO --timeout 60`); there they default to
    # "not given", so that one given before the command name is kept.
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    fetch = command("fetch", "fetch a model reference and print its local path")
    fetch.add_argument(
        "ref", help="hf:<owner>/<repo>[/<file>.safetensors][@rev], civitai:<version id> or https://…"
    )

    ensure = command("ensure", "fetch a model and print its local path")
    ensure.add_argument("model", metavar="REPO_ID", help=f"a Hub repo id, or a catalog name: {_names()}")
    ensure.add_argument("--revision", help="commit, branch or tag (default: main, recorded as its commit)")
    ensure.add_argument("--name", help="folder name under models/ (default: the repo id with / as --)")
    ensure.add_argument("--allow", action="append", metavar="GLOB", help="only files matching (repeatable)")
    ensure.add_argument("--ignore", action="append", metavar="GLOB", help="skip files matching (repeatable)")

    warm = command("warm", "fetch the models of the given job types (default: WORKER_JOBS)")
    warm.add_argument("--jobs", help="comma-separated job types: " + ", ".join(sorted(catalog.JOB_MODELS)))

    status = command("status", "the catalog models on the volume: complete, outdated, damaged or missing")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    ls = command("ls", "every model with its size, source, last use, and whether it is pinned or in use")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    rm = command("rm", "remove a model from the volume (refused while a job uses it)")
    rm.add_argument("model", metavar="NAME|REF", help="a folder name (python -m cache ls) or a reference")

    prune = command("prune", "evict least recently used on-demand models down to a size")
    prune.add_argument("--max-gb", type=float, help="the size to reach (default: CACHE_MAX_GB)")

    seed = command("seed", "publish a local directory as a catalog model (air-gapped volumes)")
    seed.add_argument("name", help=f"catalog name: {_names()}")
    seed.add_argument(
        "--from", dest="source", type=Path, required=True, help="folder holding the model's layout"
    )
    return parser


def _add_common_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=default,
        help="use this instead of <volume>/models (to bake an image)",
    )
    parser.add_argument(
        "--profile",
        choices=catalog.PROFILES,
        default=default,
        help="catalog profile (default: production unless MODEL_PROFILE=tiny)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default,
        help="seconds to wait for another worker (CACHE_WAIT_TIMEOUT_S)",
    )
    parser.add_argument(
        "--lease-s",
        type=float,
        default=default,
        help="lock lease; every worker on the volume must use the same (CACHE_LEASE_S)",
    )


def _names() -> str:
    return ", ".join(catalog.names())


if __name__ == "__main__":
    sys.exit(main())
