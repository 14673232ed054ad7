"""FastAPI orchestrator and the `amc` command line that composes every package."""
