"""The device interface: something that can run a command, receive a file and report its health.
Timing a model (agent or benchmark_model) is written once here on top of those primitives, so the
local CPU and a phone go through the same code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from profiler.benchmark_model import BenchmarkOutputError, benchmark_model_command, parse_benchmark_model
from profiler.devices.identity import DeviceIdentity
from profiler.errors import DeviceUnavailable, MeasurementError
from profiler.protocol import MeasureConfig, Measurement, check_runtime, sha256_file

log = logging.getLogger(__name__)

AGENT_RUNTIMES = ("onnxruntime", "litert", "tflite_runtime")
# Phones keep everything the profiler pushes under one folder (Android's shell user may write here).
DEVICE_ROOT = "/data/local/tmp/amc"


@dataclass
class CommandResult:
    rc: int
    stdout: str
    stderr: str = ""

    @property
    def output(self) -> str:
        return self.stdout + (("\n" + self.stderr) if self.stderr else "")


@dataclass
class Health:
    """Whether a device can measure right now, and what it is."""

    spec: str
    ok: bool
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    latency_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def agent_source_dir() -> Path:
    """The `device_agent` package folder of this installation."""
    import importlib.util

    spec = importlib.util.find_spec("device_agent")
    if spec is None or not spec.submodule_search_locations:
        raise DeviceUnavailable("local", "the device_agent package is not importable",
                                hint="reinstall the project (`make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def agent_files(root: Path | None = None) -> list[Path]:
    """The files the agent needs on a device: its Python sources, without the phone emulator."""
    root = root or agent_source_dir()
    return sorted(p for p in root.rglob("*.py")
                  if "phone_sim" not in p.relative_to(root).parts and "__pycache__" not in p.parts)


def agent_hash(root: Path | None = None) -> str:
    root = root or agent_source_dir()
    digest = hashlib.sha256()
    for path in agent_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def parse_agent_output(device: str, text: str) -> dict[str, Any]:
    """The agent's JSON object (through device_agent.schema.parse_result when present), as a dict."""
    from device_agent.schema import ResultParseError, parse_result

    try:
        return parse_result(text)
    except ResultParseError as exc:
        raise MeasurementError(device, f"could not parse the agent's result ({exc})", output=text) from exc


_MODEL_FAULTS = ("ModelNotFound", "ModelLoadError", "InferenceError", "UsageError")


def _first_number(*values: Any) -> float | None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def parse_thermal(text: str) -> float | None:
    """Hottest thermal zone from `cat /sys/class/thermal/thermal_zone*/temp` (millidegrees or degrees)."""
    temps = []
    for tok in text.split():
        try:
            v = float(tok)
        except ValueError:
            continue
        v = v / 1000.0 if abs(v) > 200 else v
        if -40 < v < 150:
            temps.append(v)
    return max(temps) if temps else None


class Device(ABC):
    """A machine that can time a model. Subclasses provide `run`, `push` and the agent command; the
    measurement protocol, model transfer and result parsing are shared."""

    kind: ClassVar[str]

    def __init__(self, spec: str, *, benchmark_binary: str | None = None):
        self.spec = spec
        self.benchmark_binary = benchmark_binary
        self.lock = threading.Lock()  # one measurement per device at a time
        self.measure_calls = 0
        self._identity: DeviceIdentity | None = None
        self._identity_lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """What the device is (`identity().key`), not where it was reached: the key of its measurements
        in the cache and of its lookup tables. Asks the device on first use (once per connection)."""
        return self.identity().key

    @property
    def legacy_id(self) -> str:
        """The key versions before device identities filed this device's measurements and tables under."""
        return self.spec

    @property
    def known_identity(self) -> DeviceIdentity | None:
        """The identity if it was already asked for on this connection, without asking the device."""
        self._check_connection()
        return self._identity

    def identity(self) -> DeviceIdentity:
        """What the device says it is (DeviceUnavailable when it cannot be asked)."""
        self._check_connection()
        with self._identity_lock:
            if self._identity is None:
                self._identity = self._probe_identity()
                log.info("%s is %s: key %s", self.spec, self._identity.describe(), self._identity.key)
            return self._identity

    def forget_identity(self) -> None:
        """Ask again next time (the connection was lost: another device may answer at this address)."""
        self._identity = None

    def _check_connection(self) -> None:  # noqa: B027 - devices with connections override it
        """Forget the identity when the connection it was asked on is gone, without talking to the device."""

    def agent_version(self) -> str:
        """Version (hash of the sources) of the agent this device runs."""
        return agent_hash()

    def _probe_identity(self) -> DeviceIdentity:
        try:
            res = self.run(f"{self.agent_command()} info", timeout_s=60)
            info = self._agent_result(res).get("device")
            identity = DeviceIdentity.from_info(info if isinstance(info, dict) else {}, agent=self.agent_version())
        except DeviceUnavailable:
            if not self.benchmark_binary:
                raise
            identity = self._props_identity()  # a phone without Python: what its properties say
        if not (identity.model or identity.build or identity.serial):
            raise DeviceUnavailable(self.spec, "the device does not say what it is (no model, build or serial)",
                                    hint="measurements could not be told apart from another device's; check that "
                                         "`getprop ro.product.model` works in its shell")
        return identity

    def _props_identity(self) -> DeviceIdentity:
        props = ("ro.serialno", "ro.product.model", "ro.build.fingerprint")
        res = self.run("; ".join(f"echo \"$(getprop {p} 2>/dev/null)\"" for p in props), timeout_s=30)
        lines = (res.stdout.splitlines() + ["", "", ""])[:3] if res.rc == 0 else ["", "", ""]
        serial, model, build = (line.strip() or None for line in lines)
        return DeviceIdentity(serial=serial, model=model, build=build, agent="none",
                              runtimes={"benchmark_model": self.benchmark_binary or ""})

    # -- what a device must provide -------------------------------------------------------------
    @abstractmethod
    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        """Run a shell command line on the device."""

    @abstractmethod
    def model_path_on_device(self, model_path: Path, sha256: str) -> str:
        """Make the model available on the device (pushing it only if absent); return its path there."""

    @abstractmethod
    def agent_command(self) -> str:
        """Shell prefix that starts the agent (`python -m device_agent`), installing it if needed."""

    def forget_model(self, remote: str) -> None:  # noqa: B027 - devices that copy models override it
        """Delete a model copy on the device (after it turned out to be corrupt)."""

    def health(self) -> Health:
        start = time.monotonic()
        try:
            res = self.run("echo ok", timeout_s=10)
            ok = res.rc == 0 and "ok" in res.stdout
            return Health(self.spec, ok, "" if ok else f"echo failed: {res.output.strip()[:200]}",
                          latency_s=time.monotonic() - start)
        except DeviceUnavailable as exc:
            return Health(self.spec, False, exc.reason)

    def temperature_c(self) -> float | None:
        try:
            res = self.run("cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null", timeout_s=10)
        except DeviceUnavailable:
            return None
        return parse_thermal(res.stdout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- the shared measurement ------------------------------------------------------------------
    def measure(self, model_path: Path | str, config: MeasureConfig | None = None, *,
                runtime: str = "onnxruntime", timeout_s: float = 300.0,
                sha256: str | None = None) -> Measurement:
        """Time one model under `config` and return its statistics. Raises DeviceUnavailable when the
        device cannot be used, MeasurementError when the run itself fails."""
        config = config or MeasureConfig()
        check_runtime(runtime)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise MeasurementError(self.spec, f"model file {model_path} does not exist",
                                   hint="export the model first (.onnx or .tflite)")
        sha = sha256 or sha256_file(model_path)
        identity = self.identity()
        with self.lock:
            self.measure_calls += 1
            remote = self.model_path_on_device(model_path, sha)
            if config.cooldown_s:
                time.sleep(config.cooldown_s)
            if runtime == "benchmark_model":
                measurement = self._measure_benchmark_model(remote, config, sha, timeout_s, identity.key)
            else:
                measurement = self._measure_agent(remote, config, runtime, sha, timeout_s, identity.key)
            if measurement.temperature_c is None:  # the agent reads it itself; benchmark_model does not
                measurement.temperature_c = self.temperature_c()
        self._check_identity(identity, measurement)
        checked = self._checked(measurement)
        if isinstance(checked, MeasurementError):
            raise checked
        return checked

    def measure_many(self, model_paths: Sequence[Path | str], config: MeasureConfig | None = None, *,
                     runtime: str = "onnxruntime", timeout_s: float = 300.0) -> list[Measurement | MeasurementError]:
        """Time several models under `config`, in order, in one run of the agent on the device: one start of
        Python and of the runtime instead of one per model, which is most of what a latency table's tiny
        kernels cost. Each model gets its Measurement or, when it alone could not be timed, its
        MeasurementError; DeviceUnavailable is raised when the device cannot be used. `timeout_s` is per
        model. benchmark_model times them one by one; devices that do not run the agent themselves (the
        farm) override this."""
        config = config or MeasureConfig()
        check_runtime(runtime)
        paths = [Path(p) for p in model_paths]
        if runtime == "benchmark_model" or len(paths) < 2:
            return self._measure_each(paths, config, runtime, timeout_s)
        out: list[Measurement | MeasurementError | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            if not path.is_file():
                out[i] = MeasurementError(self.spec, f"model file {path} does not exist",
                                          hint="export the model first (.onnx or .tflite)")
        todo = [i for i, done in enumerate(out) if done is None]
        if not todo:
            return [r for r in out if r is not None]
        shas = {i: sha256_file(paths[i]) for i in todo}
        identity = self.identity()
        with self.lock:
            self.measure_calls += len(todo)
            remotes = {i: self.model_path_on_device(paths[i], shas[i]) for i in todo}
            args = ["bench", *(remotes[i] for i in todo), *self._agent_bench_options(config, runtime)]
            if config.cooldown_s:
                args += ["--cooldown", str(config.cooldown_s)]  # before each model's timed runs
            res = self.run(f"{self.agent_command()} {shlex.join(args)}", timeout_s=timeout_s * len(todo))
            data = self._agent_result(res)
            items = data.get("results") if data.get("kind") == "batch" else None
            if not isinstance(items, list) or len(items) != len(todo):
                raise MeasurementError(self.spec, f"the agent answered {len(items or [])} results for {len(todo)} "
                                                  "models", output=res.output)
            for i, item in zip(todo, items, strict=True):
                try:
                    self._agent_error(item, res.output)
                    out[i] = self._agent_measurement(item, remotes[i], config, runtime, shas[i], identity.key,
                                                     res.stdout)
                except MeasurementError as exc:
                    out[i] = exc
            unread = [m for m in out if isinstance(m, Measurement) and m.temperature_c is None]
            if unread:  # the agent reads it itself where the device has thermal zones
                temperature = self.temperature_c()
                for measurement in unread:
                    measurement.temperature_c = temperature
        for m in out:
            if isinstance(m, Measurement):
                self._check_identity(identity, m)
        return [self._checked(m) if isinstance(m, Measurement) else m for m in out if m is not None]

    def _measure_each(self, paths: Sequence[Path], config: MeasureConfig, runtime: str,
                      timeout_s: float) -> list[Measurement | MeasurementError]:
        out: list[Measurement | MeasurementError] = []
        for path in paths:
            try:
                out.append(self.measure(path, config, runtime=runtime, timeout_s=timeout_s))
            except MeasurementError as exc:
                out.append(exc)
        return out

    def _check_identity(self, identity: DeviceIdentity, measurement: Measurement) -> None:
        changed = identity.mismatch(measurement.device_info)
        if changed is not None:
            # Another phone answers at this address than the one the cache key was taken from.
            self.forget_identity()
            raise DeviceUnavailable(self.spec, f"the device at this address changed while measuring ({changed})",
                                    hint="measure again: the new device is identified afresh")

    def _checked(self, measurement: Measurement) -> Measurement | MeasurementError:
        try:
            return measurement.check()
        except ValueError as exc:
            return MeasurementError(self.spec, f"inconsistent statistics: {exc}", output=json.dumps(measurement.raw))

    @staticmethod
    def _agent_bench_options(config: MeasureConfig, runtime: str) -> list[str]:
        args = ["--runtime", runtime, "--threads", str(config.threads), "--warmup", str(config.warmup),
                "--runs", str(config.runs)]
        return args + (["--cpu-mask", config.cpu_mask] if config.cpu_mask else [])

    def _measure_agent(self, remote: str, config: MeasureConfig, runtime: str, sha: str,
                       timeout_s: float, device_id: str) -> Measurement:
        command = f"{self.agent_command()} {shlex.join(['bench', remote, *self._agent_bench_options(config, runtime)])}"
        res = self.run(command, timeout_s=timeout_s)
        return self._agent_measurement(self._agent_result(res), remote, config, runtime, sha, device_id, res.stdout)

    def _agent_measurement(self, data: dict[str, Any], remote: str, config: MeasureConfig, runtime: str, sha: str,
                           device_id: str, output: str) -> Measurement:
        """A Measurement from one validated bench result of the agent."""
        if data.get("model_sha256") not in (None, sha):
            # The file on the device is not the model we meant (a corrupted or interrupted copy).
            self.forget_model(remote)
            raise MeasurementError(self.spec, f"the device timed a different file than {sha[:12]} "
                                              f"(it has {str(data.get('model_sha256'))[:12]}); removed it",
                                   hint="measure again: the model will be pushed afresh")
        info = data.get("device")
        try:
            return Measurement(
                device_id=device_id, runtime=runtime, threads=config.threads, model_sha256=sha,
                median_ms=float(data["median_ms"]), p90_ms=float(data["p90_ms"]),
                mean_ms=float(data["mean_ms"]), std_ms=float(data["std_ms"]),
                min_ms=float(data["min_ms"]), max_ms=float(data["max_ms"]),
                runs=int(data.get("runs") or config.runs),
                load_ms=float(data["load_ms"]) if data.get("load_ms") is not None else None,
                temperature_c=_first_number(data.get("temperature_before_c"),
                                            (data.get("device") or {}).get("temperature_c")),
                device_info=info if isinstance(info, dict) else {},
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MeasurementError(self.spec, f"the agent's result lacks a field ({exc})", output=output) from exc

    def _agent_result(self, res: CommandResult) -> dict[str, Any]:
        """The agent's validated result, or the matching error: a device that cannot run the agent is
        DeviceUnavailable (retry elsewhere), a model the runtime rejects is a MeasurementError."""
        if res.rc != 0 and "{" not in res.stdout:
            text = res.output.strip()[-300:]
            if "No module named" in res.output and "device_agent" in res.output:
                raise DeviceUnavailable(self.spec, "the device agent cannot be started (device_agent not found)",
                                        hint="reinstall the agent; for a phone, check that python3 works in "
                                             "`adb shell`")
            if res.rc in (126, 127) or "not found" in res.stderr.lower():
                raise DeviceUnavailable(self.spec, f"cannot start the agent: {text}",
                                        hint="check that Python 3 with numpy and a runtime is installed on the "
                                             "device, or use --runtime benchmark_model")
            raise DeviceUnavailable(self.spec, f"the agent crashed with status {res.rc}: {text}")
        data = parse_agent_output(self.spec, res.stdout)
        self._agent_error(data, res.output)
        return data

    def _agent_error(self, data: dict[str, Any], output: str) -> None:
        """Raise what an `ok: false` result of the agent means (nothing for a result)."""
        if data.get("ok") is False:
            etype, error = data.get("error_type", "AgentError"), data.get("error", "")
            if etype in _MODEL_FAULTS:
                raise MeasurementError(self.spec, f"{etype}: {error}", output=output, model_fault=True,
                                       hint="check that the model file is a valid model for this runtime")
            if etype == "RuntimeUnavailable":
                raise DeviceUnavailable(self.spec, f"{etype}: {error}",
                                        hint="install the runtime on the device or choose another --runtime")
            raise MeasurementError(self.spec, f"{etype}: {error}", output=output)

    def _measure_benchmark_model(self, remote: str, config: MeasureConfig, sha: str,
                                 timeout_s: float, device_id: str) -> Measurement:
        if not self.benchmark_binary:
            raise MeasurementError(self.spec, "runtime benchmark_model needs the path of the binary on the device",
                                   hint="pass benchmark_binary=... (CLI: --benchmark-binary PATH)")
        if not remote.endswith(".tflite"):
            raise MeasurementError(self.spec, "benchmark_model times .tflite models only",
                                   hint="export the model to TFLite first")
        res = self.run(benchmark_model_command(self.benchmark_binary, remote, config) + " 2>&1",
                       timeout_s=timeout_s)
        try:
            parsed = parse_benchmark_model(res.output)
        except BenchmarkOutputError as exc:
            if res.rc == 127:
                raise DeviceUnavailable(self.spec, f"{self.benchmark_binary} is not on the device",
                                        hint="push the stock benchmark_model binary and give its path") from exc
            raise MeasurementError(self.spec, str(exc), output=res.output) from exc
        return Measurement(
            device_id=device_id, runtime="benchmark_model", threads=config.threads, model_sha256=sha,
            median_ms=parsed.median_ms, p90_ms=parsed.p90_ms, mean_ms=parsed.inference_avg_ms,
            std_ms=parsed.std_ms, min_ms=parsed.min_ms, max_ms=parsed.max_ms,
            runs=parsed.count or config.runs, load_ms=parsed.init_ms,
            raw={"format": parsed.format, "estimated_percentiles": parsed.estimated,
                 "first_ms": parsed.first_ms, "warmup_avg_ms": parsed.warmup_avg_ms},
        )
