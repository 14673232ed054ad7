"""Joining the farm's Ray cluster, for the device hosts (`host`) and for the clients (`client`, the
orchestrator's Ray jobs) alike. Below both, and below `profiler.devices`: `host` opens devices, and
`profiler.devices` reaches the farm through `client`, so what they share lives here (a shared piece in
`host` made the import cycle devices -> client -> host -> devices)."""

from __future__ import annotations

import ipaddress
import logging
import os

from compressor.errors import ConfigError
from profiler.farm.names import NAMESPACE, check_ray_address


def node_ip_address() -> str | None:
    """The address of this host's own Ray node, from AMC_RAY_NODE_IP, or None (Ray's choice).

    Ray attaches a driver to a Ray node it finds among this machine's processes, preferring the head. Where one
    machine stands in for several hosts (network namespaces, tests/netbed.py), every node's processes are
    visible to every namespace, so without this a device host attaches to the head's node and its phone actors
    run in the head's namespace, where its phones are not reachable."""
    value = os.environ.get("AMC_RAY_NODE_IP", "").strip()
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError("AMC_RAY_NODE_IP", f"{value!r} is not an IP address: give the address this host's Ray node "
                                             "was started with (`ray start --node-ip-address`)") from None


def ray_init(address: str, *, insecure: bool = False) -> None:
    """Join the cluster at `address` as a driver in the farm's namespace (once per process)."""
    check_ray_address(address, insecure=insecure)  # before importing Ray: a refused address costs nothing
    import ray

    if ray.is_initialized():
        return
    node_ip = node_ip_address()
    _cluster_notices_to_stderr()
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False, _node_ip_address=node_ip)  # None: Ray's own choice
    except ConnectionError as exc:
        raise ConfigError("ray", f"cannot join the Ray cluster at {address} ({exc}). Check the address `ray start "
                                 "--head` printed, that this machine runs a Ray node of that cluster (`ray start "
                                 "--address ADDRESS`), and that RAY_AUTH_TOKEN is the cluster's") from exc
    except RuntimeError as exc:
        if node_ip is None or "No node info found" not in str(exc):
            raise
        raise ConfigError("AMC_RAY_NODE_IP", f"no Ray node of the cluster at {address} runs on {node_ip} on this "
                                             "machine: start one (`ray start --address ADDRESS --node-ip-address "
                                             f"{node_ip}`) or unset AMC_RAY_NODE_IP") from exc


def _cluster_notices_to_stderr() -> None:
    """Ray prints the cluster's error notices (a node marked dead, a worker killed) to the driver's stdout
    whatever `log_to_driver` says; our stdout is the command's output (`amc devices --json` is read by
    programs), so they go to stderr. Ray's own printer is kept when this Ray has no such hook."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "amc_to_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.amc_to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr
