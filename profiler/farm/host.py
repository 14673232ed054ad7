"""`amc device-host`: serve this machine's phones to the Ray cluster. Every few seconds the host looks
for phones (USB serials through adb-shell where libusb finds any, plus the `--device adb:HOST:PORT`
phones and emulators that answer on their port); each phone found gets a named actor
(`phone|<host>|<spec>`, namespace `amc-farm`) pinned to this machine's Ray node, where the phone's
cable is. The actors are owned by this process, not detached: when the host exits, however it exits,
Ray ends its phones' actors and they leave the cluster's listing."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compressor.errors import ConfigError
from profiler.devices import list_usb_serials, open_device, parse_device_spec
from profiler.farm.cluster import ray_init
from profiler.farm.names import NAMESPACE, phone_actor_name
from profiler.farm.phone import PhoneServer

log = logging.getLogger(__name__)


class PhoneActorBody(PhoneServer):
    """The phone actor's class: opens its device itself, on the host's node."""

    def __init__(self, spec: str, host: str, options: dict[str, Any], lease_ttl_s: float = 60.0):
        # Directly: the actor inherits the host's AMC_RAY_ADDRESS, and through the farm it would look
        # for its own phone among the farm's (which it is about to serve) and never find it.
        super().__init__(open_device(spec, direct=True, **options), host=host, lease_ttl_s=lease_ttl_s)


def tcp_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@dataclass
class ServedPhone:
    spec: str
    actor: Any
    info: dict[str, Any] = field(default_factory=dict)


class DeviceHost:
    """Finds this machine's phones and keeps one actor per phone that answers."""

    def __init__(self, address: str, *, specs: Sequence[str] = (), usb: bool = True, name: str | None = None,
                 device_options: dict[str, Any] | None = None, insecure: bool = False,
                 lease_ttl_s: float = 60.0, start_timeout_s: float = 180.0, on_event: Callable[[str], None] | None = None):
        self.address = address
        self.specs = [parse_device_spec(s) for s in specs]
        for spec in self.specs:
            if spec.kind == "local":
                raise ConfigError("device", "a device host serves phones (adb:SERIAL or adb:HOST:PORT), not `local`")
        self.usb = usb
        self.name = name or socket.gethostname()
        self.device_options = dict(device_options or {})
        self.insecure = insecure
        self.lease_ttl_s = lease_ttl_s
        self.start_timeout_s = start_timeout_s
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.served: dict[str, ServedPhone] = {}
        self.notes: list[str] = []
        self._node_id: str | None = None

    def connect(self) -> None:
        import ray

        ray_init(self.address, insecure=self.insecure)
        self._node_id = ray.get_runtime_context().get_node_id()

    # -- what is plugged in -------------------------------------------------------------------------
    def present(self) -> list[str]:
        """Specs of the phones that are here now (plugged in, or answering on their port)."""
        found = []
        self.notes = []
        if self.usb:
            serials, note = list_usb_serials()
            found += [f"adb:{s}" for s in serials]
            if note:
                self.notes.append(note)
        for spec in self.specs:
            if spec.kind == "adb-tcp" and spec.host and spec.port and tcp_answers(spec.host, spec.port):
                found.append(spec.text)
            elif spec.kind == "adb-usb" and spec.text not in found and not self.usb:
                found.append(spec.text)  # asked for by serial with USB scanning off: try it
        return list(dict.fromkeys(found))

    # -- actors -------------------------------------------------------------------------------------
    def _launch(self, spec: str) -> tuple[str, Any, Any]:
        """Create the phone's actor and ask it to identify its phone; (spec, actor, pending answer)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._node_id is None:
            raise RuntimeError("DeviceHost.connect() first")
        actor_cls: Any = ray.remote(PhoneActorBody)
        actor = actor_cls.options(
            name=phone_actor_name(self.name, spec), namespace=NAMESPACE, max_concurrency=4, num_cpus=0,
            max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(self._node_id, soft=False),
        ).remote(spec, self.name, self.device_options, self.lease_ttl_s)
        return spec, actor, actor.start.remote()

    def _started(self, spec: str, actor: Any, pending: Any, timeout_s: float) -> ServedPhone | None:
        import ray

        try:
            info = ray.get(pending, timeout=max(0.1, timeout_s))
        except Exception as exc:  # the actor could not start (or its phone hung)
            ray.kill(actor)
            self.on_event(f"{spec}: could not serve it ({type(exc).__name__}: {exc}); trying again next scan")
            return None
        if not info.get("ok"):
            ray.kill(actor)
            self.on_event(f"{spec}: does not answer ({info.get('message')}); trying again next scan")
            return None
        self.on_event(f"+ {spec}: {info.get('model')} (Android {info.get('android') or '?'}, serial "
                      f"{info.get('serial') or '?'}) served as {phone_actor_name(self.name, spec)}")
        return ServedPhone(spec, actor, info)

    def _stop(self, spec: str, why: str) -> None:
        import ray

        served = self.served.pop(spec, None)
        if served is None:
            return
        try:
            ray.kill(served.actor)
        except Exception as exc:  # already gone
            log.debug("killing the actor of %s: %s", spec, exc)
        self.on_event(f"- {spec}: {why}")

    def scan(self) -> None:
        """One pass: serve phones that appeared, drop phones that left (or whose actor died)."""
        import ray

        here = self.present()
        for spec in list(self.served):
            if spec not in here:
                self._stop(spec, "gone (unplugged, or no longer answering)")
        for spec, served in list(self.served.items()):
            try:
                served.info = ray.get(served.actor.info.remote(), timeout=10)
            except Exception as exc:
                self._stop(spec, f"its actor stopped answering ({type(exc).__name__})")
        # New phones start together: each actor's worker process and its phone's first answer take seconds.
        launched = [self._launch(spec) for spec in here if spec not in self.served]
        deadline = time.monotonic() + self.start_timeout_s
        for spec, actor, pending in launched:
            started = self._started(spec, actor, pending, deadline - time.monotonic())
            if started is not None:
                self.served[spec] = started

    def run(self, *, scan_s: float = 3.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            self.scan()
            stop.wait(max(0.1, scan_s - (time.monotonic() - started)))

    def close(self) -> None:
        for spec in list(self.served):
            self._stop(spec, "the device host is stopping")
