"""Inference runtimes the agent can time, behind one small interface and a registry by name."""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .schema import InferenceError, InputInfo, ModelLoadError, RuntimeUnavailable

logger = logging.getLogger(__name__)


def _import(module: str, runtime: str, hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"runtime {runtime!r} is not installed on this device ({exc}); {hint}"
        ) from exc


def random_input(shape: list[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    raise InferenceError(f"input dtype {dtype} is not supported; give the model float or integer inputs")


class Runner(ABC):
    """Loads one model with one runtime and runs it on fixed inputs."""

    name: str

    def __init__(self, model_path: Path, *, threads: int) -> None:
        self.model_path = model_path
        self.threads = threads

    @staticmethod
    @abstractmethod
    def version() -> str:
        """Version of the installed runtime; raises RuntimeUnavailable when it is not installed."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; raises ModelLoadError."""

    @abstractmethod
    def inputs(self) -> list[InputInfo]:
        """Input names, concrete shapes (dynamic dims set to 1) and dtypes."""

    @abstractmethod
    def prepare(self, rng: np.random.Generator) -> None:
        """Create the random inputs used by every `run()`."""

    @abstractmethod
    def run(self) -> None:
        """One inference."""


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    @staticmethod
    def _ort() -> Any:
        return _import("onnxruntime", "onnxruntime", "install it with `pip install onnxruntime`")

    @staticmethod
    def version() -> str:
        return str(OnnxRuntimeRunner._ort().__version__)

    def load(self) -> None:
        ort = self._ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for bad models
            raise ModelLoadError(f"onnxruntime could not load {self.model_path}: {exc}") from exc
        self._specs: list[tuple[str, list[int], np.dtype]] = []
        for node in self.session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
            self._specs.append((node.name, shape, _onnx_dtype(node.type)))

    def inputs(self) -> list[InputInfo]:
        return [{"name": n, "shape": s, "dtype": str(np.dtype(t))} for n, s, t in self._specs]

    def prepare(self, rng: np.random.Generator) -> None:
        self._feed = {n: random_input(s, t, rng) for n, s, t in self._specs}

    def run(self) -> None:
        try:
            self.session.run(None, self._feed)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed to run {self.model_path}: {exc}") from exc


_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _onnx_dtype(type_name: str) -> np.dtype:
    if type_name not in _ONNX_TYPES:
        raise InferenceError(f"ONNX input type {type_name} is not supported; use float32 inputs")
    return np.dtype(_ONNX_TYPES[type_name])


class _TfliteInterpreterRunner(Runner):
    """Shared by LiteRT and tflite_runtime, which expose the same Interpreter API."""

    module: str
    install_hint: str

    @classmethod
    def _interpreter_module(cls) -> Any:
        return _import(cls.module, cls.name, cls.install_hint)

    def load(self) -> None:
        module = self._interpreter_module()
        try:
            interp = module.Interpreter(model_path=str(self.model_path), num_threads=self.threads)
            details = interp.get_input_details()
            for detail in details:
                signature = list(detail.get("shape_signature", detail["shape"]))
                if any(d < 0 for d in signature):
                    interp.resize_tensor_input(detail["index"], [d if d > 0 else 1 for d in signature])
            interp.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError(f"{self.name} could not load {self.model_path}: {exc}") from exc
        self.interp = interp
        self._details = interp.get_input_details()
        self._outputs = [d["index"] for d in interp.get_output_details()]

    def inputs(self) -> list[InputInfo]:
        return [
            {"name": d["name"], "shape": [int(x) for x in d["shape"]], "dtype": str(np.dtype(d["dtype"]))}
            for d in self._details
        ]

    def prepare(self, rng: np.random.Generator) -> None:
        self._feed = [
            (d["index"], random_input([int(x) for x in d["shape"]], np.dtype(d["dtype"]), rng))
            for d in self._details
        ]

    def run(self) -> None:
        try:
            for index, value in self._feed:
                self.interp.set_tensor(index, value)
            self.interp.invoke()
            for index in self._outputs:
                self.interp.get_tensor(index)
        except Exception as exc:
            raise InferenceError(f"{self.name} failed to run {self.model_path}: {exc}") from exc


class LiteRTRunner(_TfliteInterpreterRunner):
    name = "litert"
    module = "ai_edge_litert.interpreter"
    install_hint = "install it with `pip install ai-edge-litert`"

    @staticmethod
    def version() -> str:
        LiteRTRunner._interpreter_module()
        try:
            from importlib.metadata import version

            return version("ai-edge-litert")
        except Exception:
            return "unknown"


class TfliteRuntimeRunner(_TfliteInterpreterRunner):
    name = "tflite_runtime"
    module = "tflite_runtime.interpreter"
    install_hint = "install it with `pip install tflite-runtime`, or use --runtime litert"

    @staticmethod
    def version() -> str:
        TfliteRuntimeRunner._interpreter_module()
        package = _import("tflite_runtime", "tflite_runtime", TfliteRuntimeRunner.install_hint)
        return str(getattr(package, "__version__", "unknown"))


RUNTIMES: dict[str, type[Runner]] = {
    OnnxRuntimeRunner.name: OnnxRuntimeRunner,
    LiteRTRunner.name: LiteRTRunner,
    TfliteRuntimeRunner.name: TfliteRuntimeRunner,
}


def get_runner(name: str) -> type[Runner]:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}") from None
