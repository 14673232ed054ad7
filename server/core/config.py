"""Service settings, read from `AMC_*` environment variables (and `amc serve` flags)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_episodes: int = Field(10_000, ge=1)
    # The module that provides validate/run_search/load_episode_log (kept as a setting so a test can
    # point the service at a tiny search; production never changes it).
    search_module: str = "compressor.search"

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str | Path) else value

    @field_validator("api_token")
    @classmethod
    def _token_strength(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 16:
            raise ValueError("AMC_API_TOKEN must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return value or None

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

    def prepare_dirs(self) -> None:
        for path in (self.data_dir, self.jobs_dir, self.uploads_dir):
            path.mkdir(parents=True, exist_ok=True)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals; anything else may be reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
