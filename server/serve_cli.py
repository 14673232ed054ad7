"""`amc serve`: run the orchestrator and the web status page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError
    from rich.console import Console

    from server.core.config import Settings
    from server.core.security import InsecureBindError, TokenFileError, check_bind, ensure_token
    from server.main import create_app

    console = Console(stderr=True)
    overrides = {k: v for k, v in dict(host=args.host, port=args.port, data_dir=args.data_dir,
                                        max_workers=args.max_workers, database_url=args.database_url).items()
                 if v is not None}
    try:
        settings = Settings(**overrides)
        check_bind(settings.host, settings)
    except (ValidationError, InsecureBindError) as exc:
        console.print(f"[red]amc serve:[/red] {exc}")
        return 2
    os.umask(0o077)  # the database, uploads, job folders and logs: private to this user
    try:
        settings.prepare_dirs()
        token, created = ensure_token(settings)
    except (OSError, TokenFileError) as exc:
        console.print(f"[red]amc serve:[/red] {exc}")
        return 2
    if created:
        console.print(f"[bold]API token[/bold] (shown once; stored in {settings.token_file}, mode 0600):\n{token}")
    elif not os.environ.get("AMC_API_TOKEN"):
        console.print(f"API token: in {settings.token_file}")
    console.print(f"AMC service on http://{settings.host}:{settings.port}/  (API docs: /docs, data: {settings.data_dir})")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
