"""The farm as a client sees it: every phone the cluster's device hosts serve (`Farm.phones`), and
measurements leased to a free phone of a model (`model:Pixel_7`) or to one phone (`adb:SERIAL`,
`adb:HOST:PORT`) anywhere in the cluster (`FarmPool`, with the DevicePool contract: retried on another
phone when one vanishes, None after the deadline so the lookup table answers). `FarmDevice` wraps a
FarmPool as a `Device`, so the oracle, `amc bench` and `amc lut` use the farm unchanged."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import ConfigError
from profiler.cache import MeasurementCache
from profiler.devices.base import CommandResult, Device, Health
from profiler.devices.identity import DeviceIdentity
from profiler.errors import DeviceUnavailable, MeasurementError
from profiler.farm.names import PHONE_PREFIX, model_slug, parse_model_spec
from profiler.farm.phone import raise_error
from profiler.protocol import MeasureConfig, Measurement, check_runtime, sha256_file

log = logging.getLogger(__name__)


@dataclass
class FarmPhone:
    """One phone of the cluster as its actor describes it."""

    name: str  # the actor's name
    spec: str
    host: str
    model: str | None
    android: str | None
    serial: str | None
    health: str  # ok | unhealthy | unknown | no answer
    detail: str = ""
    lease: dict[str, Any] | None = None
    measurements: int = 0
    identity: dict[str, Any] = field(default_factory=dict)
    handle: Any = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str | None:
        return self.identity.get("key")

    @property
    def model_slug(self) -> str:
        return model_slug(self.model)

    def matches(self, selector: str) -> bool:
        """`selector` is `model:NAME` or a phone's spec (`adb:SERIAL` also matches a phone by serial)."""
        wanted = parse_model_spec(selector)
        if wanted is not None:
            return self.model_slug.lower() == wanted.lower()
        return selector == self.spec or (selector == f"adb:{self.serial}" and self.serial is not None)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("handle", None)
        data["model_resource"] = f"model:{self.model_slug}"
        return data


def _holder(purpose: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{purpose}"


class Farm:
    """A connection to the cluster (joined on first use, in the farm's namespace)."""

    def __init__(self, address: str, *, insecure: bool = False):
        self.address = address
        self.insecure = insecure

    def connect(self) -> None:
        from profiler.farm.cluster import ray_init

        ray_init(self.address, insecure=self.insecure)

    def phones(self, *, check_health: bool = False, timeout_s: float = 10.0) -> list[FarmPhone]:
        """Every phone served in the cluster now. `check_health` asks each phone that is not leased
        (a leased phone answers with its last health, untouched)."""
        import ray

        self.connect()
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith(PHONE_PREFIX))
        handles: list[tuple[str, Any]] = []
        refs: list[Any] = []
        for name in names:
            try:
                handle = ray.get_actor(name)
            except ValueError:  # its host left since the listing
                continue
            handles.append((name, handle))
            refs.append(handle.info.remote())
        health_refs = [h.health.remote() for _, h in handles] if check_health else []
        ready, _ = ray.wait(refs + health_refs, num_returns=len(refs) + len(health_refs), timeout=timeout_s)
        ready_set = set(ready)
        out = []
        for i, (name, handle) in enumerate(handles):
            info: dict[str, Any] = {}
            if refs[i] in ready_set:
                try:
                    answer: Any = ray.get(refs[i])
                    info = answer
                except Exception as exc:  # the actor died between the listing and the call
                    log.debug("%s: %s", name, exc)
                    continue
            if info and not info.get("ready", True):
                continue  # its host is still identifying the phone: served once it answers
            health = info.get("health") or {}
            if check_health and health_refs[i] in ready_set:
                try:
                    health = ray.get(health_refs[i])
                except Exception as exc:
                    health = {"ok": False, "detail": f"{type(exc).__name__}"}
            _, host, spec = name.split("|", 2)
            state = ("no answer" if not info else "unknown" if health.get("ok") is None
                     else "ok" if health.get("ok") else "unhealthy")
            out.append(FarmPhone(name=name, spec=spec, host=info.get("host") or host, model=info.get("model"),
                                 android=info.get("android"), serial=info.get("serial"), health=state,
                                 detail=str(health.get("detail") or ""), lease=info.get("lease"),
                                 measurements=int(info.get("measurements") or 0),
                                 identity=info.get("identity") or {}, handle=handle))
        return out

    def select(self, selector: str) -> list[FarmPhone]:
        return [p for p in self.phones() if p.matches(selector)]

    def check(self, selector: str) -> None:
        """ConfigError unless some phone of the cluster matches `selector` now."""
        phones = self.phones()
        if any(p.matches(selector) for p in phones):
            return
        known = sorted({f"model:{p.model_slug}" for p in phones} | {p.spec for p in phones})
        raise ConfigError("device", f"no phone in the farm at {self.address} matches {selector!r}; the farm has: "
                                    f"{', '.join(known) or 'no phones (is `amc device-host` running on the USB hosts?)'}")


class FarmPool:
    """Measurements on the phones of the cluster that match `selector`, one per phone at a time
    cluster-wide (the lease is the phone actor's). Same contract as `DevicePool.measure`."""

    def __init__(self, farm: Farm, selector: str, *, cache: MeasurementCache | None = None,
                 measure_timeout_s: float = 300.0, poll_s: float = 0.25):
        self.farm = farm
        self.selector = selector
        self.cache = cache
        self.measure_timeout_s = measure_timeout_s
        self.poll_s = poll_s
        self.events: list[str] = []  # what happened to measurements (retries, fallbacks), for logs and tests

    def _note(self, message: str) -> None:
        self.events.append(message)
        log.warning("%s", message)

    def measure(self, model_path: Path | str, config: MeasureConfig | None = None, *,
                runtime: str = "onnxruntime", deadline_s: float | None = None,
                timeout_s: float | None = None, fresh: bool = False,
                absent_s: float | None = None) -> Measurement | None:
        """Measure on a free matching phone, retrying on another when one fails or vanishes. None when no
        phone measured before `deadline_s` (None: only as long as some untried phone is there), or when no
        healthy matching phone has been in the farm for `absent_s` (None: wait for one up to the deadline;
        busy phones are always waited for). `fresh`: measure now even when the cache knows the model (the
        result is cached)."""
        config = config or MeasureConfig()
        check_runtime(runtime)
        path = Path(model_path)
        model = path.read_bytes()
        sha = sha256_file(path)

        def cached(phones: list[FarmPhone]) -> Measurement | None:
            if self.cache is None or fresh:
                return None
            for p in phones:
                hit = None if p.key is None else self.cache.get(device_id=p.key, runtime=runtime, config=config,
                                                                sha256=sha)
                if hit is not None:
                    return hit
            return None

        answer = self._on_a_phone(path.name, lambda handle, token, timeout: handle.measure.remote(
            token, model, path.suffix.lower(), dataclasses.asdict(config), runtime, timeout),
            cached=cached, deadline_s=deadline_s, timeout_s=timeout_s, absent_s=absent_s)
        if answer is None or isinstance(answer, Measurement):
            return answer
        result = Measurement.from_dict(answer["measurement"])
        if self.cache is not None:
            self.cache.put(result, config)
        return result

    def measure_many(self, model_paths: list[Path], config: MeasureConfig | None = None, *,
                     runtime: str = "onnxruntime", deadline_s: float | None = None, timeout_s: float | None = None,
                     absent_s: float | None = None) -> list[Measurement | MeasurementError] | None:
        """Several models in one agent run on one free matching phone (`PhoneServer.measure_many`), with
        `measure`'s retries, deadline and `absent_s` for the run as a whole; each model gets its Measurement
        or its MeasurementError. Cached models are not sent. None when no phone ran them."""
        config = config or MeasureConfig()
        check_runtime(runtime)
        paths = [Path(p) for p in model_paths]
        shas = [sha256_file(p) for p in paths]
        out: list[Measurement | MeasurementError | None] = [None] * len(paths)
        if self.cache is not None:
            keys = {p.key for p in self.farm.phones() if p.matches(self.selector) and p.key}
            for i, sha in enumerate(shas):
                out[i] = next((hit for key in keys if (hit := self.cache.get(
                    device_id=key, runtime=runtime, config=config, sha256=sha)) is not None), None)
        todo = [i for i, hit in enumerate(out) if hit is None]
        if todo:
            models = [(paths[i].read_bytes(), paths[i].suffix.lower()) for i in todo]
            what = f"{len(todo)} models ({paths[todo[0]].name}, ...)"
            answer = self._on_a_phone(what, lambda handle, token, timeout: handle.measure_many.remote(
                token, models, dataclasses.asdict(config), runtime, timeout / len(todo)),
                deadline_s=deadline_s, timeout_s=timeout_s, absent_s=absent_s, count=len(todo))
            if not isinstance(answer, dict):
                return None
            for i, item in zip(todo, answer["results"], strict=True):
                if not item.get("ok"):
                    try:
                        raise_error(item)
                    except MeasurementError as exc:
                        out[i] = exc
                    continue  # (a phone raises DeviceUnavailable for the whole run, never for one model)
                result = Measurement.from_dict(item["measurement"])
                out[i] = result
                if self.cache is not None:
                    self.cache.put(result, config)
        return [r for r in out if r is not None]

    def _on_a_phone(self, what: str, call: Callable[[Any, str, float], Any], *,
                    cached: Callable[[list[FarmPhone]], Measurement | None] | None = None,
                    deadline_s: float | None, timeout_s: float | None, absent_s: float | None,
                    count: int = 1) -> dict[str, Any] | Measurement | None:
        """`call(actor, lease token, timeout)` on a free matching phone, each phone tried once: its answer
        (an `ok` dict), what `cached` finds for the phones listed, or None (see `measure`). The timeout is
        `count` models' (`timeout_s` and `measure_timeout_s` are per model). A phone that
        vanishes, fails the call as a whole, or reports a measurement error that is not the model's is
        given up for the next one; a model's fault is raised."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        tried: set[str] = set()
        next_wait_note = time.monotonic()
        absent_since: float | None = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._note(f"no phone matching {self.selector} measured {what} within {deadline_s:.0f} s; "
                           "the lookup table answers instead")
                return None
            phones = [p for p in self.farm.phones() if p.matches(self.selector)]
            hit = cached(phones) if cached is not None else None
            if hit is not None:
                return hit
            candidates = [p for p in phones if p.name not in tried and p.health != "unhealthy"]
            if not candidates:
                if tried or deadline is None:
                    self._note(f"no phone matching {self.selector} is left to measure {what} "
                               f"(tried: {', '.join(sorted(tried)) or 'none'}); the lookup table answers instead")
                    return None
                absent_since = time.monotonic() if absent_since is None else absent_since
                if absent_s is not None and time.monotonic() - absent_since >= absent_s:
                    self._note(f"no healthy phone matching {self.selector} has been in the farm for {absent_s:.0f} s "
                               f"to measure {what}")
                    return None
                time.sleep(min(self.poll_s * 4, max(0.0, left or 0.0)))
                continue
            absent_since = None
            # Imported only once there is a phone to call: Ray reads RAY_AUTH_MODE when it is first imported.
            import ray
            from ray.exceptions import GetTimeoutError, RayActorError

            leased = None
            for phone in sorted(candidates, key=lambda p: (p.lease is not None, p.measurements)):
                try:
                    token = ray.get(phone.handle.lease.remote(_holder(what)), timeout=10)
                except (RayActorError, GetTimeoutError) as exc:
                    tried.add(phone.name)
                    self._note(f"{phone.spec} on {phone.host} did not answer a lease ({type(exc).__name__})")
                    continue
                if token is not None:
                    leased = (phone, token)
                    break
            if leased is None:  # all busy: wait for one to free up
                if time.monotonic() >= next_wait_note:
                    log.info("waiting for a free phone matching %s to measure %s (%d busy%s)", self.selector,
                             what, len(candidates), "" if left is None else f", {left:.0f} s left")
                    next_wait_note = time.monotonic() + 10.0
                time.sleep(self.poll_s if left is None else min(self.poll_s, max(0.0, left)))
                continue
            phone, token = leased
            tried.add(phone.name)
            per_model = self.measure_timeout_s if timeout_s is None else min(self.measure_timeout_s, timeout_s)
            timeout = per_model * count if left is None else max(1.0, min(per_model * count, left))
            try:
                data = ray.get(call(phone.handle, token, timeout), timeout=timeout + 30)
            except (RayActorError, GetTimeoutError) as exc:
                self._note(f"{phone.spec} on {phone.host} vanished while measuring {what} "
                           f"({type(exc).__name__}); retrying on another phone matching {self.selector}")
                continue
            finally:
                try:
                    phone.handle.release.remote(token)
                except Exception as exc:  # the actor is gone with its lease
                    log.debug("release on %s: %s", phone.spec, exc)
            if not data.get("ok"):
                try:
                    raise_error(data)
                except MeasurementError as exc:
                    if exc.model_fault:
                        raise
                    self._note(f"measurement on {phone.spec} ({phone.host}) failed, trying another phone: {exc}")
                except DeviceUnavailable as exc:
                    self._note(f"{phone.spec} on {phone.host} became unavailable while measuring ({exc.reason}); "
                               f"retrying on another phone matching {self.selector}")
                continue
            return data


class FarmDevice(Device):
    """`model:NAME` or one farm phone as a Device: measurements go through a FarmPool (leased cluster-wide);
    its identity is that of the phones it stands for (the most common one among a model's phones).
    Busy phones are waited for up to the measurement's timeout (at least `wait_s`); when no matching phone
    is in the farm for `absent_s` (a host re-listing a phone that reconnects takes seconds), a measurement
    raises DeviceUnavailable at once, so a job's own wait for its device (profiler.waiting) starts and says so."""

    kind = "farm"

    def __init__(self, spec: str, *, farm: Farm, cache: MeasurementCache | None = None, wait_s: float = 60.0,
                 absent_s: float = 15.0):
        super().__init__(spec)
        self.farm = farm
        self.pool = FarmPool(farm, spec, cache=cache)
        self.wait_s = wait_s
        self.absent_s = absent_s

    def _probe_identity(self) -> DeviceIdentity:
        phones = [p for p in self.farm.phones() if p.matches(self.spec) and p.identity]
        if not phones:
            raise DeviceUnavailable(self.spec, f"no phone in the farm matches {self.spec}",
                                    hint="check `amc devices` (with AMC_RAY_ADDRESS set) and that the phone's "
                                         "`amc device-host` runs")
        keys = Counter(p.key for p in phones)
        chosen = next(p for p in phones if p.key == keys.most_common(1)[0][0])
        return DeviceIdentity.from_dict(chosen.identity)

    def measure(self, model_path: Path | str, config: MeasureConfig | None = None, *,
                runtime: str = "onnxruntime", timeout_s: float = 300.0,
                sha256: str | None = None) -> Measurement:
        result = self.pool.measure(model_path, config, runtime=runtime, deadline_s=max(timeout_s, self.wait_s),
                                   timeout_s=timeout_s, absent_s=self.absent_s)
        if result is None:
            raise DeviceUnavailable(self.spec, self.pool.events[-1] if self.pool.events else "no phone measured",
                                    hint="check `amc devices` with AMC_RAY_ADDRESS set")
        return result

    def measure_many(self, model_paths: Sequence[Path | str], config: MeasureConfig | None = None, *,
                     runtime: str = "onnxruntime", timeout_s: float = 300.0) -> list[Measurement | MeasurementError]:
        """Several models in one agent run on one phone of the farm (a latency table's kernels)."""
        paths = [Path(p) for p in model_paths]
        if len(paths) < 2:
            return self._measure_each(paths, config or MeasureConfig(), runtime, timeout_s)
        results = self.pool.measure_many(paths, config, runtime=runtime,
                                         deadline_s=max(timeout_s * len(paths), self.wait_s), timeout_s=timeout_s,
                                         absent_s=self.absent_s)
        if results is None:
            raise DeviceUnavailable(self.spec, self.pool.events[-1] if self.pool.events else "no phone measured",
                                    hint="check `amc devices` with AMC_RAY_ADDRESS set")
        return results

    def health(self) -> Health:
        phones = [p for p in self.farm.phones(check_health=True) if p.matches(self.spec)]
        ok = [p for p in phones if p.health == "ok"]
        return Health(self.spec, bool(ok), "" if ok else f"{len(phones)} matching phone(s), none healthy",
                      info={"phones": [p.spec for p in phones], "model": phones[0].model if phones else None})

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        raise DeviceUnavailable(self.spec, "a farm phone runs only measurements, through its device host",
                                hint="use `amc bench --device SPEC` with AMC_RAY_ADDRESS set")

    def model_path_on_device(self, model_path: Path, sha256: str) -> str:
        raise DeviceUnavailable(self.spec, "a farm phone receives models through its device host")

    def agent_command(self) -> str:
        raise DeviceUnavailable(self.spec, "a farm phone runs its agent through its device host")


def measure_each_model(farm: Farm, model_path: Path | str, config: MeasureConfig | None = None, *,
                       runtime: str = "onnxruntime", deadline_s: float | None = 300.0,
                       cache: MeasurementCache | None = None) -> list[dict[str, Any]]:
    """The model's latency on each phone model the farm serves now: one row per model (`model`, `device`
    as `model:NAME`, `phones`, `hosts`, the measurement's `median_ms`, `p90_ms`, `min_ms`, `max_ms`, `runs`,
    `measured_on`, `cached`), all models at once, each on a free phone of its model. A model none of whose
    phones measured before `deadline_s` gets `median_ms` None and the reason in `error`: never a number
    that was not measured."""
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[str, list[FarmPhone]] = {}
    for phone in farm.phones():
        if phone.model:
            groups.setdefault(phone.model_slug, []).append(phone)

    def one(slug: str) -> dict[str, Any]:
        phones = groups[slug]
        pool = FarmPool(farm, f"model:{slug}", cache=cache)
        row: dict[str, Any] = {"model": phones[0].model, "device": f"model:{slug}", "phones": len(phones),
                               "hosts": sorted({p.host for p in phones}), "median_ms": None, "error": None}
        try:
            result = pool.measure(model_path, config, runtime=runtime, deadline_s=deadline_s)
        except MeasurementError as exc:  # the model itself is at fault: the same on every phone
            row["error"] = str(exc)
            return row
        if result is None:
            row["error"] = pool.events[-1] if pool.events else "no phone of this model measured"
            return row
        row.update(median_ms=result.median_ms, p90_ms=result.p90_ms, min_ms=result.min_ms, max_ms=result.max_ms,
                   runs=result.runs, measured_on=(result.raw.get("farm") or {}).get("phone"), cached=result.cached,
                   device_id=result.device_id)
        return row

    if not groups:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(groups))) as workers:
        return list(workers.map(one, sorted(groups)))
