"""Shared fixtures. Tests use tiny models; those that need ../shared/data skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AMC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (CIFAR-10 test set and pretrained ResNets); skips the test when absent."""
    if not (SHARED_DATA / "cifar10_test.npz").is_file():
        pytest.skip(f"{SHARED_DATA} is absent (CIFAR-10 and pretrained weights live there)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # CI has 2 cores; keep torch from oversubscribing them when tests start subprocesses.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def _postgres():
    """A started PostgreSQL server of its own (tests/pg.py), stopped and removed after; skips the test when
    PostgreSQL's binaries are absent."""
    from pg import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are absent: `apt-get install postgresql` "
                    "(`make install` does)")
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session; each test takes a database of its own on it."""
    yield from _postgres()


@pytest.fixture
def private_pg_server():
    """A PostgreSQL server for one test alone: one that stops or restarts it disturbs no other test."""
    yield from _postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str | None:
    """The store's database for a test run on both: None (the default, SQLite in the data dir), or a
    fresh database of the session's PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_server").create_database()
