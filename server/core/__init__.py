"""Service settings and security helpers."""
