"""Joining the farm's Ray cluster, for the device hosts (`host`) and for the clients (`client`, the
orchestrator's Ray jobs) alike. Below both, and below `profiler.devices`: `host` opens devices, and
`profiler.devices` reaches the farm through `client`, so what they share lives here (a shared piece in
`host` made the import cycle devices -> client -> host -> devices)."""

from __future__ import annotations

import logging

from compressor.errors import ConfigError
from profiler.farm.names import NAMESPACE, check_ray_address


def ray_init(address: str, *, insecure: bool = False) -> None:
    """Join the cluster at `address` as a driver in the farm's namespace (once per process)."""
    check_ray_address(address, insecure=insecure)  # before importing Ray: a refused address costs nothing
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
    except ConnectionError as exc:
        raise ConfigError("ray", f"cannot join the Ray cluster at {address} ({exc}). Check the address `ray start "
                                 "--head` printed, that this machine runs a Ray node of that cluster (`ray start "
                                 "--address ADDRESS`), and that RAY_AUTH_TOKEN is the cluster's") from exc
