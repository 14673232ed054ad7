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
