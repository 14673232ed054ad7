"""Latency truth: devices (local CPU, ADB over USB/TCP), device pool, measurement protocol,
result cache, per-device latency lookup tables and parsers for stock benchmark tools."""
