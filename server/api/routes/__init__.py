"""Thin routes; each translates domain errors into HTTP errors."""
