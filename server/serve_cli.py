"""`amc serve`: run the orchestrator and the web status page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

    from server.core.config import Settings

# Settings that `amc serve` also takes as flags: setting name -> flag (each is read from AMC_<NAME> too).
FLAGS = {"host": "--host", "port": "--port", "data_dir": "--data-dir", "max_workers": "--workers",
         "database_url": "--database-url", "max_job_mb": "--max-job-mb", "max_queued_jobs": "--max-queued-jobs",
         "keep_days": "--keep-days", "max_worker_restarts": "--max-worker-restarts", "worker_nice": "--worker-nice",
         "jobs_on_ray": "--jobs-on-ray", "ray_job_cpus": "--ray-job-cpus"}

SECRET = ("api_token", "database_url")  # never echoed in an error (a URL may hold a password)


class SettingsError(ValueError):
    """A setting given to `amc serve` is out of range; the message names the flag or variable it came from."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the REST orchestrator and web status page",
        description="Run the REST API (/docs), the job workers and the status page (/). Every route but "
                    "/healthz, /docs and the page's own files needs the API token (printed on first start, "
                    "kept in <data dir>/api-token). Every setting is also read from AMC_* environment "
                    "variables (AMC_HOST, AMC_PORT, AMC_DATA_DIR, AMC_DATABASE_URL, AMC_API_TOKEN, "
                    "AMC_MAX_WORKERS, AMC_ALLOWED_HOSTS, AMC_DATA_ROOTS, AMC_ALLOWED_MODEL_MODULES, ...).",
    )
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="SQLite database, uploads and job folders (default ~/.local/share/amc)")
    p.add_argument("--workers", type=int, default=None, dest="max_workers",
                   help="jobs that run at the same time (default 1)")
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL instead of the SQLite file")
    limits = p.add_argument_group("job limits")
    limits.add_argument("--max-job-mb", type=float, default=None, metavar="MB",
                        help="the most a job's folder (checkpoint, models, reports) may hold; a job past it "
                             "fails and says so (default 10240; AMC_MAX_JOB_MB)")
    limits.add_argument("--max-queued-jobs", type=int, default=None, metavar="N",
                        help="jobs that may wait for a worker; a submit past it is answered 503 with Retry-After "
                             "(default 10000; AMC_MAX_QUEUED_JOBS)")
    limits.add_argument("--keep-days", type=float, default=None, metavar="DAYS",
                        help="remove finished jobs and their folders this many days after they finished "
                             "(default: keep them all; AMC_KEEP_DAYS)")
    limits.add_argument("--max-worker-restarts", type=int, default=None, metavar="N",
                        help="restart a job's worker process that died without a result from the job's "
                             "checkpoint up to N times, then fail the job (0..100, default 2; "
                             "AMC_MAX_WORKER_RESTARTS)")
    limits.add_argument("--worker-nice", type=int, default=None, metavar="NICE",
                        help="niceness of job processes, so that requests stay responsive while a search "
                             "runs (0..19, default 10; AMC_WORKER_NICE)")
    ray = p.add_argument_group("jobs on a Ray cluster (docs/FARM.md)")
    ray.add_argument("--jobs-on-ray", action="store_true", default=None,
                     help="run each job as a Ray task on the cluster at AMC_RAY_ADDRESS, on whichever node has "
                          "the CPUs, instead of in a process of this machine; its state, log and files come back "
                          "here (AMC_JOBS_ON_RAY=1)")
    ray.add_argument("--ray-job-cpus", type=float, default=None, metavar="N",
                     help="CPUs each job's Ray task reserves (default: AMC_WORKER_THREADS, the torch threads it "
                          "runs; AMC_RAY_JOB_CPUS)")
    p.set_defaults(func=run)


def _explain(exc: ValidationError, given: dict[str, Any]) -> SettingsError:
    """One line per wrong setting, named as the user gave it: the flag, or else its AMC_ variable."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        variable = f"AMC_{name.upper()}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if name in given:
            value = given[name]
            where = f"{FLAGS[name]} {value:g}" if isinstance(value, float) else f"{FLAGS[name]} {value}"
        elif name in SECRET or not name:
            where = variable if name else "settings"
        else:
            where = f"{variable}={os.environ.get(variable, '')}"
        lines.append(msg if msg.startswith(where) else f"{where}: {msg.removeprefix(variable + ': ')}")
    return SettingsError("; ".join(lines))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The server's settings: AMC_* variables, overridden by the flags given (SettingsError names the wrong one)."""
    from pydantic import ValidationError

    from server.core.config import Settings

    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise _explain(exc, given) from None


def check_database(url: str) -> str | None:
    """Open the store once before the server listens: an empty database gets its tables, an older one is
    upgraded, and one the server cannot use (made by a newer release, unreachable, refusing the login) is
    a message here rather than a traceback from inside uvicorn. None when the database is ready."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.store import Store, StoreError, redacted_url

    try:
        Store(url).close()
    except StoreError as exc:
        return str(exc)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return (f"cannot open the database {redacted_url(url)}: {reason}. Check that its server runs and "
                "that AMC_DATABASE_URL (or --database-url) names it, its user and password")
    return None


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from rich.console import Console
    from rich.markup import escape

    from server.core.security import InsecureBindError, TokenFileError, check_bind, ensure_token
    from server.main import create_app

    console = Console(stderr=True)
    try:
        settings = settings_from_args(args)
        check_bind(settings.host, settings)
    except (SettingsError, InsecureBindError) as exc:
        console.print(f"[red]amc serve:[/red] {exc}")
        return 2
    os.umask(0o077)  # the database, uploads, job folders and logs: private to this user
    try:
        settings.prepare_dirs()
        token, created = ensure_token(settings)
    except (OSError, TokenFileError) as exc:
        console.print(f"[red]amc serve:[/red] {exc}")
        return 2
    problem = check_database(settings.db_url)
    if problem:
        console.print(f"[red]amc serve:[/red] {escape(problem)}")
        return 2
    if created:
        console.print(f"[bold]API token[/bold] (shown once; stored in {settings.token_file}, mode 0600):\n{token}")
    elif not os.environ.get("AMC_API_TOKEN"):
        console.print(f"API token: in {settings.token_file}")
    console.print(f"AMC service on http://{settings.host}:{settings.port}/  (API docs: /docs, data: {settings.data_dir})")
    if settings.jobs_on_ray:
        console.print(f"Jobs run as Ray tasks on the cluster at {settings.ray_address} ({settings.job_cpus:g} CPU each)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
