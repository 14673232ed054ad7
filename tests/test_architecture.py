"""The layer contracts in pyproject.toml (checked by `make lint` with import-linter) stay complete:
every module of compressor is either one of its public interfaces or protected as internal."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import compressor

ROOT = Path(__file__).resolve().parents[1]
# What profiler (and anything but compressor and server) may import of the search.
PUBLIC = {"compressor.latency", "compressor.kernel_space", "compressor.ops", "compressor.zoo", "compressor.export",
          "compressor.errors", "compressor.fileio", "compressor.models", "compressor.predictors"}


def _contract(name_start: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith(name_start))


def test_every_compressor_module_is_public_or_protected():
    protected = set(_contract("compressor's internals")["protected_modules"])
    modules = {f"compressor.{m.name}" for m in pkgutil.iter_modules(compressor.__path__)}
    assert not protected & PUBLIC
    unclassified = modules - protected - PUBLIC
    assert not unclassified, f"add {sorted(unclassified)} to PUBLIC here or to the protected contract in pyproject.toml"
    assert not (protected | PUBLIC) - modules, "the contracts name modules that no longer exist"


def test_every_lookup_table_module_is_in_a_layer():
    import profiler.lut

    contract = _contract("the lookup table's parts")
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    modules = {m.name for m in pkgutil.iter_modules(profiler.lut.__path__)}
    assert modules - layered == set(), f"add {sorted(modules - layered)} to a layer of the contract in pyproject.toml"
    assert layered - modules == set(), "the contract names modules that no longer exist"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No module of ours reaches itself through imports, lazy ones in functions included (once:
    profiler.devices -> profiler.farm.client -> profiler.farm.host -> profiler.devices)."""
    import grimp

    packages = ("compressor", "profiler", "device_agent", "server")
    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True)
    ours = {m for m in graph.modules if m.split(".")[0] in packages}
    imports = {m: set(graph.find_modules_directly_imported_by(m)) & ours for m in ours}
    assert _cycles(imports) == [], "import cycles (break each by moving what they share into a lower module)"
