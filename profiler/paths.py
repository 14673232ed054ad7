"""Where the profiler keeps its state. Environment variables override the defaults so tests and the
server can point everything at a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """`$AMC_CONFIG_DIR`, else `~/.config/amc`: ADB key, registered devices."""
    return Path(os.environ.get("AMC_CONFIG_DIR") or Path.home() / ".config" / "amc")


def cache_dir() -> Path:
    """`$AMC_CACHE_DIR`, else `~/.cache/amc`: measurement cache, lookup tables."""
    return Path(os.environ.get("AMC_CACHE_DIR") or Path.home() / ".cache" / "amc")


def default_cache_path() -> Path:
    return cache_dir() / "measurements.sqlite"


def default_lut_dir() -> Path:
    return cache_dir() / "lut"
