"""Shared helpers of the server tests: the app in this process (`in_process_app`, fast: most API
tests) and a real uvicorn process on a free loopback port (`ServerProcess`: worker processes, restarts,
the browser page).

No tests live here; test_server_*.py and test_api_*.py import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"
# A small real search: demo-cnn on digits, a handful of episodes.
SMALL_JOB = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg",
             "episodes": 4, "device": "local", "seed": 0}


@dataclass
class InProcessApp:
    app: Any  # fastapi.FastAPI
    client: Any  # fastapi.testclient.TestClient, sending the token
    store: Any  # server.store.Store
    service: Any  # server.jobs.JobService, never started
    settings: Any  # server.core.config.Settings


@contextmanager
def in_process_app(data_dir: Path, **settings: Any) -> Iterator[InProcessApp]:
    """The app without its lifespan: `app.dependency_overrides` hand the routes a store and a job
    service of the test's own. The service is never started, so a submitted job stays queued (and
    POST /jobs still validates fully). The profiler's device registry and ADB key are private."""
    from fastapi.testclient import TestClient

    from server.api import deps
    from server.core.config import Settings
    from server.jobs import JobService
    from server.main import create_app
    from server.store import Store

    config = Settings(data_dir=data_dir, api_token=TOKEN, **settings)
    config.prepare_dirs()
    store = Store(config.db_url)
    service = JobService(store=store, settings=config)
    app = create_app(config)
    async def settings_() -> Settings:  # async like the dependencies they replace: no thread-pool hop
        return config

    async def store_() -> Store:
        return store

    async def service_() -> JobService:
        return service

    async def token_() -> str:
        return TOKEN

    app.dependency_overrides.update({deps.get_settings: settings_, deps.get_store: store_,
                                     deps.get_service: service_, deps.get_token: token_})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AMC_CONFIG_DIR", str(data_dir.parent / "config"))
        # a loopback name: the server answers only Host headers that name it (DNS rebinding)
        client = TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            yield InProcessApp(app, client, store, service, config)
        finally:
            client.close()
            store.close()


def other_value(f: Any) -> Any:
    """A valid value of a search field (server.options.SearchOption) other than its default."""
    if f.type is bool:
        return not f.default
    if f.choices:
        return next(c for c in reversed(f.choices) if c != f.default)
    if f.type is int:
        return (f.default if isinstance(f.default, int) else 0) + 2
    if f.type is float:
        return round(f.default + 0.1, 6) if f.default is not None else 0.05
    return {"model": "resnet20", "data": "cifar10:/tmp/x.npz", "target": "params=0.4",
            "train_data": "cifar10:/tmp/train.npz", "train_device": "cuda:0"}.get(f.name, f"{f.name}-x")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_env(request: Any) -> dict[str, str]:
    """The server's database for a module-scoped fixture parametrized over ["sqlite", "postgresql"]: nothing
    (SQLite in the data dir) or AMC_DATABASE_URL of a fresh database on the session's PostgreSQL server
    (tests/pg.py; skips where PostgreSQL is absent)."""
    if request.param == "sqlite":
        return {}
    return {"AMC_DATABASE_URL": request.getfixturevalue("pg_server").create_database()}


class ServerProcess:
    """`python -m uvicorn --factory server.main:create_app` on loopback with its own data dir."""

    def __init__(self, data_dir: Path, *, port: int | None = None, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "AMC_DATA_DIR": str(data_dir), "AMC_API_TOKEN": TOKEN,
                    "AMC_WORKER_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
                    # the profiler's device registry and ADB key: private to this test
                    "AMC_CONFIG_DIR": str(data_dir.parent / "config"),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"uvicorn-{self.port}.log"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "server.main:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()  # not left running, orphaned, after the test that started it has failed
        raise RuntimeError(f"server did not answer /healthz within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the server process only (its job processes are left orphaned, as after a crash)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def client(self, *, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def wait_for(client: httpx.Client, job_id: str, states: set[str], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s; last: {job}")


def wait_for_episodes(client: httpx.Client, job_id: str, n: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["episodes_done"] >= n or job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not record {n} episodes in {timeout} s; last: {job}")
