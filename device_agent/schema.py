"""The JSON the device agent prints, and the errors it reports.

This module is the contract between the agent (which runs on a phone) and the profiler (which parses
what the phone printed). It uses only the standard library so both sides can import it cheaply.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, NotRequired, TypedDict

SCHEMA_VERSION = 1

RuntimeName = Literal["onnxruntime", "litert", "tflite_runtime"]


class DeviceInfo(TypedDict):
    """What the agent can read about the device it runs on; unreadable values are null."""

    model: str | None
    manufacturer: str | None
    abi: str | None
    android_release: str | None
    serial: str | None
    kernel: str | None
    cores: int | None
    governor: str | None
    temperature_c: float | None
    thermal_zone: str | None
    python: str
    # What the host tells devices apart by (besides model and serial): Android's build fingerprint
    # (the OS elsewhere) and the installed runtimes' versions. Absent from agents older than them.
    build: NotRequired[str | None]
    runtimes: NotRequired[dict[str, str]]


class InputInfo(TypedDict):
    name: str
    shape: list[int]
    dtype: str


class BenchResult(TypedDict):
    """One benchmark run: timings in milliseconds over `runs` timed inferences after `warmup` untimed ones.

    `samples_ms` (every timed run, in order) is present only when the agent ran with `--samples`.
    """

    schema: int
    kind: Literal["bench"]
    ok: Literal[True]
    runtime: RuntimeName
    runtime_version: str
    threads: int
    warmup: int
    runs: int
    cooldown_s: float
    cpu_affinity: list[int] | None
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    load_ms: float
    model_path: str
    model_sha256: str
    model_size: int
    inputs: list[InputInfo]
    device: DeviceInfo
    temperature_before_c: float | None
    temperature_after_c: float | None
    samples_ms: NotRequired[list[float]]


class InfoResult(TypedDict):
    schema: int
    kind: Literal["info"]
    ok: Literal[True]
    device: DeviceInfo


class ErrorResult(TypedDict):
    """Printed instead of a result when anything goes wrong; the process then exits non-zero."""

    schema: int
    kind: Literal["error"]
    ok: Literal[False]
    error: str
    error_type: str


class BatchResult(TypedDict):
    """Several models timed by one agent run: a bench result or an error result for each, in order."""

    schema: int
    kind: Literal["batch"]
    ok: Literal[True]
    results: list[BenchResult | ErrorResult]


TIMING_FIELDS = ("median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "load_ms")

# field -> accepted JSON types; `None` in the tuple means null is allowed.
_NUM = (int, float)
BENCH_FIELDS: dict[str, tuple[Any, ...]] = {
    "schema": (int,),
    "kind": (str,),
    "ok": (bool,),
    "runtime": (str,),
    "runtime_version": (str,),
    "threads": (int,),
    "warmup": (int,),
    "runs": (int,),
    "cooldown_s": _NUM,
    "cpu_affinity": (list, type(None)),
    **{name: _NUM for name in TIMING_FIELDS},
    "model_path": (str,),
    "model_sha256": (str,),
    "model_size": (int,),
    "inputs": (list,),
    "device": (dict,),
    "temperature_before_c": (*_NUM, type(None)),
    "temperature_after_c": (*_NUM, type(None)),
}
DEVICE_FIELDS: dict[str, tuple[Any, ...]] = {
    "model": (str, type(None)),
    "manufacturer": (str, type(None)),
    "abi": (str, type(None)),
    "android_release": (str, type(None)),
    "serial": (str, type(None)),
    "kernel": (str, type(None)),
    "cores": (int, type(None)),
    "governor": (str, type(None)),
    "temperature_c": (*_NUM, type(None)),
    "thermal_zone": (str, type(None)),
    "python": (str,),
}
INFO_FIELDS: dict[str, tuple[Any, ...]] = {"schema": (int,), "kind": (str,), "ok": (bool,), "device": (dict,)}
BATCH_FIELDS: dict[str, tuple[Any, ...]] = {"schema": (int,), "kind": (str,), "ok": (bool,), "results": (list,)}
ERROR_FIELDS: dict[str, tuple[Any, ...]] = {
    "schema": (int,),
    "kind": (str,),
    "ok": (bool,),
    "error": (str,),
    "error_type": (str,),
}


# --- errors the agent reports (error_type is the class name) ------------------------------------------


class AgentError(Exception):
    """Base of everything the agent reports as `ok: false`; `exit_code` is the process exit status."""

    exit_code = 1

    @property
    def error_type(self) -> str:
        return type(self).__name__


class UsageError(AgentError):
    """Bad command-line arguments."""

    exit_code = 2


class ModelNotFound(AgentError):
    """The model file does not exist or cannot be read."""

    exit_code = 3


class ModelLoadError(AgentError):
    """The runtime could not load the model (corrupt file, wrong format, unsupported operator)."""

    exit_code = 4


class RuntimeUnavailable(AgentError):
    """The requested runtime is unknown or not installed on this device."""

    exit_code = 5


class AffinityError(AgentError):
    """The CPU mask could not be applied."""

    exit_code = 6


class InferenceError(AgentError):
    """The model loaded but running it failed."""

    exit_code = 7


class ResultParseError(ValueError):
    """What a device printed is not a valid agent result. Raised by `parse_result`, never by the agent."""

    def __init__(self, message: str, *, text: str = "") -> None:
        snippet = text.strip()[-300:]
        super().__init__(f"{message}; agent output was: {snippet!r}" if snippet else message)
        self.text = text


def error_result(error: AgentError | Exception) -> ErrorResult:
    error_type = error.error_type if isinstance(error, AgentError) else type(error).__name__
    return {
        "schema": SCHEMA_VERSION,
        "kind": "error",
        "ok": False,
        "error": str(error),
        "error_type": error_type,
    }


# --- parsing -----------------------------------------------------------------------------------------


def _check_fields(obj: dict[str, Any], fields: dict[str, tuple[Any, ...]], what: str, text: str) -> None:
    missing = [name for name in fields if name not in obj]
    if missing:
        raise ResultParseError(f"{what} lacks field(s) {', '.join(missing)}", text=text)
    for name, types in fields.items():
        value = obj[name]
        # bool is an int in Python; only accept it where bool is asked for.
        if isinstance(value, bool) and bool not in types:
            raise ResultParseError(f"{what} field {name!r} is a boolean, expected {types}", text=text)
        if not isinstance(value, types):
            raise ResultParseError(
                f"{what} field {name!r} has type {type(value).__name__}, expected one of "
                f"{', '.join(t.__name__ for t in types)}",
                text=text,
            )


def _find_json_object(text: str) -> dict[str, Any]:
    """The agent prints one JSON object; tolerate noise a device shell may add around it."""
    stripped = text.strip()
    candidates = [stripped] + [line.strip() for line in reversed(stripped.splitlines())]
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ResultParseError("no JSON object found in the agent's output", text=text)


def parse_result(text: str) -> dict[str, Any]:
    """Parse and validate what `python -m device_agent bench|info` printed.

    Returns the result dict, including validated error results (`ok: false`); raises `ResultParseError`
    when the text is not a well-formed agent result. A batch's items are validated as bench or error results.
    """
    obj = _find_json_object(text)
    if obj.get("kind") == "batch" and obj.get("ok") is not False:
        _check_schema(obj, text)
        _check_fields(obj, BATCH_FIELDS, "batch result", text)
        for item in obj["results"]:
            if not isinstance(item, dict) or item.get("kind") not in ("bench", "error"):
                raise ResultParseError(f"a batch holds {str(item)[:80]!r}, not a bench or error result", text=text)
            _check_item(item, text)
        return obj
    return _check_item(obj, text)


def _check_schema(obj: dict[str, Any], text: str) -> None:
    if obj.get("schema") != SCHEMA_VERSION:
        raise ResultParseError(
            f"agent result schema {obj.get('schema')!r} is not {SCHEMA_VERSION}; push the matching device_agent",
            text=text,
        )


def _check_item(obj: dict[str, Any], text: str) -> dict[str, Any]:
    """One result (bench, info or error), validated."""
    _check_schema(obj, text)
    kind = obj.get("kind")
    if kind == "error" or obj.get("ok") is False:
        _check_fields(obj, ERROR_FIELDS, "error result", text)
        return obj
    if kind == "info":
        _check_fields(obj, INFO_FIELDS, "info result", text)
        _check_fields(obj["device"], DEVICE_FIELDS, "device info", text)
        return obj
    if kind != "bench":
        raise ResultParseError(f"unknown result kind {kind!r}", text=text)
    _check_fields(obj, BENCH_FIELDS, "bench result", text)
    _check_fields(obj["device"], DEVICE_FIELDS, "device info", text)
    if obj["ok"] is not True:
        raise ResultParseError("bench result has ok != true", text=text)
    for name in TIMING_FIELDS:
        value = float(obj[name])
        if not math.isfinite(value) or value < 0:
            raise ResultParseError(f"{name} = {value} is not a finite non-negative number", text=text)
    if obj["runs"] < 1:
        raise ResultParseError(f"runs = {obj['runs']} is below 1", text=text)
    lo, hi = obj["min_ms"], obj["max_ms"]
    for name in ("median_ms", "p90_ms", "mean_ms"):
        if not lo - 1e-9 <= obj[name] <= hi + 1e-9:
            raise ResultParseError(
                f"{name} = {obj[name]} lies outside [min_ms, max_ms] = [{lo}, {hi}]", text=text
            )
    samples = obj.get("samples_ms")
    if samples is not None and (
        not isinstance(samples, list)
        or len(samples) != obj["runs"]
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in samples)
    ):
        raise ResultParseError(f"samples_ms must be a list of {obj['runs']} numbers", text=text)
    for spec in obj["inputs"]:
        if not (isinstance(spec, dict) and isinstance(spec.get("shape"), list)):
            raise ResultParseError(f"input entry {spec!r} lacks a shape list", text=text)
    return obj
