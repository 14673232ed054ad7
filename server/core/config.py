"""Service settings, read from `AMC_*` environment variables (and `amc serve` flags)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from compressor.errors import AmcError

# A list setting is read from one variable, comma-separated: AMC_ALLOWED_HOSTS=amc.lan,10.0.0.5
CommaList = Annotated[list[str], NoDecode]
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/amc` (usually `~/.local/share/amc`): one SQLite file, uploads and job folders."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "amc"


class Settings(BaseSettings):
    """Everything the orchestrator needs to start. Each field `x` is also read from `AMC_X`."""

    model_config = SettingsConfigDict(env_prefix="AMC_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # None: sqlite:///<data_dir>/amc.db; e.g. postgresql+psycopg://...
    api_token: str | None = None  # None: generated on first start, stored in <data_dir>/api-token (0600)
    max_workers: int = Field(1, ge=1, le=64)  # jobs running at the same time, each in its own process
    worker_threads: int = Field(1, ge=1, le=64)  # torch threads inside one job process
    cancel_grace_s: float = Field(5.0, ge=0.0)  # after a cancel, how long a job may finish its episode
    max_upload_mb: float = Field(200.0, gt=0)
    max_body_kb: float = Field(256.0, gt=0)  # every request body but an upload's
    max_episodes: int = Field(10_000, ge=1)
    # Jobs waiting for a worker; a submit past it is answered 503 with Retry-After (a flood of submits cannot
    # grow the queue, the database and the dispatcher's work without bound).
    max_queued_jobs: int = Field(10_000, ge=1, le=10_000_000)
    # Job limits. Finished jobs (and their folders) older than this many days are removed; None keeps them all.
    keep_days: float | None = Field(None, gt=0)
    # The most a job's folder (checkpoint, models, reports) may hold; a job past it fails and says so.
    max_job_mb: float | None = Field(10_240.0, gt=0)
    # A worker process that dies without a result is restarted from the job's checkpoint this many times.
    max_worker_restarts: int = Field(2, ge=0, le=100)
    # Job processes run at this niceness, below the server's requests (0 = the server's own priority).
    worker_nice: int = Field(10, ge=0, le=19)
    # How often the dispatcher removes expired jobs (AMC_KEEP_DAYS).
    retention_every_s: float = Field(3600.0, gt=0)
    # Host headers answered besides loopback names (DNS rebinding: a web page's own name is refused).
    allowed_hosts: CommaList = Field(default_factory=list)
    # `package.module:factory` model specs run code in the server: only these modules (and their
    # submodules) may be named over HTTP. Empty: none.
    allowed_model_modules: CommaList = Field(default_factory=list)
    # Folders a job's `data` path may lie in; empty: <data_dir>/datasets.
    data_roots: CommaList = Field(default_factory=list)
    # The phone farm's Ray cluster (HOST:PORT of its head; docs/FARM.md). None: no farm, no Ray.
    ray_address: str | None = None
    # Join a Ray cluster without token authentication (AMC_RAY_INSECURE=1): only on a trusted network.
    ray_insecure: bool = False
    # Run each job as a Ray task on the cluster at ray_address instead of a local process (docs/FARM.md).
    jobs_on_ray: bool = False
    # CPUs a job's Ray task reserves (num_cpus); None: worker_threads, the torch threads it runs.
    ray_job_cpus: float | None = Field(None, gt=0, le=1024)
    # The most a job on Ray may ship to its node: its data set, uploaded weights and reference models.
    ray_max_input_mb: float = Field(1024.0, gt=0)
    # How often a job on Ray sends its checkpoint back (a job whose node dies resumes from the last one).
    ray_checkpoint_every_s: float = Field(30.0, gt=0)
    # Where on its node a job on Ray works (amc-ray-<job id>/ there; removed when the job ends). The same
    # path on every node, so that a job resumed on another node reads its inputs where the first one did.
    ray_work_dir: str = "/tmp"
    # The module that provides validate/run_search/load_episode_log (kept as a setting so a test can
    # point the service at a tiny search; production never changes it).
    search_module: str = "compressor.search"

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str | Path) else value

    @field_validator("allowed_hosts", "allowed_model_modules", "data_roots", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        bad = [h for h in value if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", h) or h in ("*",)]
        if bad:
            raise ValueError(f"AMC_ALLOWED_HOSTS: {', '.join(map(repr, bad))} is not a host name or address "
                             "(give names like amc.lan or 10.0.0.5, comma-separated; wildcards are not accepted)")
        return [h.lower() for h in value]

    @field_validator("allowed_model_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if not _MODULE.fullmatch(m)]
        if bad:
            raise ValueError(f"AMC_ALLOWED_MODEL_MODULES: {', '.join(map(repr, bad))} is not a module name "
                             "(give dotted names like mypkg.models, comma-separated)")
        return value

    @field_validator("api_token")
    @classmethod
    def _token_strength(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 16:
            raise ValueError("AMC_API_TOKEN must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return value or None

    @field_validator("ray_work_dir")
    @classmethod
    def _absolute_work_dir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"AMC_RAY_WORK_DIR: {value!r} is not an absolute path (a folder every node of the "
                             "cluster can write to, e.g. /tmp or /scratch)")
        return value

    @model_validator(mode="after")
    def _ray_policy(self) -> Settings:
        if self.jobs_on_ray and not self.ray_address:
            raise ValueError("AMC_JOBS_ON_RAY: jobs run on a Ray cluster only with one to run on; set "
                             "AMC_RAY_ADDRESS=HOST:PORT (docs/FARM.md), or leave AMC_JOBS_ON_RAY off to run "
                             "jobs in this machine's own worker processes")
        # Checked when the server starts, not on the first GET /devices: Ray without authentication
        # would let anyone who reaches the cluster run code on this machine.
        if self.ray_address:
            from profiler.farm.names import check_ray_address

            try:
                self.ray_address = check_ray_address(self.ray_address, insecure=self.ray_insecure)
            except AmcError as exc:
                raise ValueError(f"AMC_RAY_ADDRESS: {exc}") from None
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'amc.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "api-token"

    @property
    def devices_file(self) -> Path:
        """This server's registered TCP devices (each server its own, whatever the user's config folder)."""
        return self.data_dir / "devices.json"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_job_bytes(self) -> int | None:
        return None if self.max_job_mb is None else int(self.max_job_mb * 2**20)

    @property
    def job_cpus(self) -> float:
        """CPUs a job's Ray task reserves."""
        return float(self.worker_threads) if self.ray_job_cpus is None else self.ray_job_cpus

    @property
    def ray_max_input_bytes(self) -> int:
        return int(self.ray_max_input_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_kb * 1024)

    @property
    def trusted_hosts(self) -> frozenset[str]:
        return frozenset((*LOOPBACK_NAMES, *self.allowed_hosts))

    @property
    def data_root_paths(self) -> tuple[Path, ...]:
        """The folders a job's data may come from, resolved (links followed)."""
        roots = [Path(r).expanduser() for r in self.data_roots] or [self.data_dir / "datasets"]
        return tuple(r.resolve() for r in roots)

    def prepare_dirs(self) -> None:
        """The data dir and its folders, private to the server's user (0700, also when they existed)."""
        for path in (self.data_dir, self.jobs_dir, self.uploads_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals; anything else may be reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
