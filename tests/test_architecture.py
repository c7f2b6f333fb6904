"""The dependency rules of the layout, read from the code's own imports (docs/DESIGN.md, "Layers").

- `worker_client` (the light client) imports nothing of the server (`worker`, `cache`) nor the GPU stack;
- `cache` imports nothing of `worker`;
- `worker/music` (the HeartMuLa model) imports nothing else of `worker`;
- no two project modules import each other, directly or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worker_client", "worker", "cache")
GPU_STACK = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "matplotlib",
    "runpod",
    "accelerate",
    "safetensors",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
    }


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of the import nodes under `if TYPE_CHECKING:`, which never run."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for child in node.body for inner in ast.walk(child))
    return hidden


def imports_of(name: str, path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports count), absolute names; with
    `runtime_only`, not those only a type checker reads."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = _type_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = project_modules()
IMPORTS = {name: imports_of(name, path) for name, path in MODULES.items()}


def offenders(prefix: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
    bad = {}
    for name, imported in IMPORTS.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        hits = sorted(
            target
            for target in imported
            if any(target == f or target.startswith(f + ".") for f in forbidden)
            and not any(target == a or target.startswith(a + ".") for a in allowed)
        )
        if hits:
            bad[name] = hits
    return bad


def test_the_rules_see_every_package() -> None:
    """A guard for the checks below: they read real files with real imports."""
    assert {"worker_client.endpoint_client", "cache.model_cache", "worker.music.generator"} <= set(MODULES)
    assert "worker_client.jobs" in IMPORTS["worker.schemas"]


def test_the_client_imports_neither_the_server_nor_the_gpu_stack() -> None:
    assert offenders("worker_client", ("worker", "cache", *GPU_STACK, "pydantic")) == {}


def test_the_cache_imports_nothing_of_the_worker() -> None:
    assert offenders("cache", ("worker",)) == {}


def test_the_music_model_imports_nothing_else_of_the_worker() -> None:
    assert offenders("worker.music", ("worker",), allowed=("worker.music",)) == {}


def _project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        imported = imports_of(name, path, runtime_only=True)
        targets = set()
        for target in imported:
            # `from worker.schemas import ImageJob` names a module and an attribute: keep the longest module
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        edges[name] = targets
    return edges


def circles_in(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle() -> None:
    assert circles_in(_project_edges()) == []


def test_a_planted_circle_is_caught() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles_in(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("rule", ["client", "cache"])
def test_a_planted_upward_import_is_caught(rule: str, tmp_path: Path) -> None:
    """The checker itself fails on the kind of import it forbids."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from worker.worker import Worker\n    return Worker\n")
    prefix = "worker_client" if rule == "client" else "cache"
    IMPORTS[f"{prefix}.planted"] = imports_of(f"{prefix}.planted", planted)
    try:
        assert f"{prefix}.planted" in offenders(prefix, ("worker",))
    finally:
        del IMPORTS[f"{prefix}.planted"]


def test_module_names_are_unique_across_packages() -> None:
    """`store.py` in two packages confused readers; every file name says what it is, once."""
    seen: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        if path.name != "__init__.py" and path.name != "__main__.py":
            seen.setdefault(path.stem, []).append(name)
    assert {stem: names for stem, names in seen.items() if len(names) > 1} == {}
