"""A search module (`AMC_SEARCH_MODULE` / `Settings.search_module`) whose run_search kills its own
process, as the kernel's OOM killer would: no test lives here (tests/test_jobs_reliability.py uses it)."""

from __future__ import annotations

import os
import signal
from typing import Any

from compressor.search import load_episode_log, validate

__all__ = ["load_episode_log", "run_search", "validate"]


def run_search(*args: Any, **kwargs: Any) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL cannot be caught")
