"""Thin routes: they call the service and return its result; domain errors become HTTP errors in
server/api/errors.py."""
