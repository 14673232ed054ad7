"""A frontier job: a job spec's `targets` and `references` turned into the arguments of
`compressor.frontier.run_frontier` and checked before the job is queued; its episodes numbered job-wide.

Reference files come from `POST /uploads` only (`NAME=UPLOAD_ID`, or the id of an uploaded .onnx file),
never from paths the client names, exactly like `weights`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from compressor.config import SearchConfig, Target
from compressor.errors import ConfigError, ModelLoadError
from server.options import is_frontier
from server.store import Store

_DEFAULT_TARGET = SearchConfig.__dataclass_fields__["target"].default
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def target_dir(target: str) -> str:
    """A target's subfolder of the job's folder (the same name `amc compress` gives it)."""
    from compressor.frontier import target_dir as folder  # imports the search (torch): only when needed

    return folder(target)


@dataclass(frozen=True)
class Reference:
    """A reference model of a frontier job, resolved from an upload."""

    spec: str  # as the job spec gave it: NAME=UPLOAD_ID or UPLOAD_ID
    name: str  # the zoo name, or the uploaded .onnx file's name (without its suffix)
    path: str  # the uploaded file on this server
    onnx: bool

    def argument(self, folder: Path) -> str:
        """`run_frontier`'s `references` item. An ONNX reference is named after its file, so it gets a
        link in the job folder named after the uploaded file (the upload itself is named by its id)."""
        if not self.onnx:
            return f"{self.name}={self.path}"
        link = folder / "references" / f"{self.name}.onnx"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and str(link.readlink()) != self.path:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(self.path)
        return str(link)


@dataclass(frozen=True)
class FrontierPlan:
    """The searches (targets, normalised as `amc compress` writes them) and the references of a frontier job."""

    targets: tuple[str, ...]
    references: tuple[Reference, ...]

    def folders(self) -> list[str]:
        return [target_dir(t) for t in self.targets]


def refield(exc: ConfigError, field: str, prefix: str) -> ConfigError:
    """The same error (its type says what kind it is), about an item of another field."""
    out = type(exc).__new__(type(exc))  # not __init__: subclasses fix their field there
    out.__dict__.update(exc.__dict__)
    out.field, out.message = field, f"{prefix}: {exc.message}"
    out.args = (f"{field}: {out.message}",)
    return out


def _parse_target(raw: str, index: int) -> str:
    try:
        return str(Target.parse(raw))
    except ConfigError as exc:
        raise refield(exc, "targets", f"targets[{index}]") from None


def _resolve_reference(raw: str, store: Store) -> Reference:
    from compressor import zoo

    spec = raw.strip()
    name, sep, upload_id = spec.partition("=")
    if sep:
        if name not in zoo.MODELS:
            raise ConfigError("references", f"{raw!r}: {name!r} is not a zoo model; give NAME=UPLOAD_ID with NAME "
                                            f"one of {', '.join(sorted(zoo.MODELS))}")
        up = store.get_upload(upload_id)
        if up is None:
            raise ConfigError("references", f"{raw!r}: no upload {upload_id!r}; upload the weights with POST /uploads "
                                            "and give NAME=UPLOAD_ID (paths on the server are not accepted)")
        if up.kind != "weights":
            raise ConfigError("references", f"{raw!r}: upload {up.id} is an {up.kind} file, not PyTorch weights")
        return Reference(spec=spec, name=name, path=up.path, onnx=False)
    up = store.get_upload(spec.removeprefix("upload:"))
    if up is None:
        raise ConfigError("references", f"{raw!r} is neither NAME=UPLOAD_ID (a zoo model with uploaded weights) nor "
                                        "the id of an .onnx file uploaded with POST /uploads (paths on the server "
                                        "are not accepted)")
    if up.kind != "onnx":
        raise ConfigError("references", f"{raw!r}: upload {up.id} is a {up.kind} file; a reference without a zoo "
                                        "name is an ONNX file (for weights give NAME=UPLOAD_ID)")
    stem = _SAFE_NAME.sub("-", Path(up.filename).stem).strip(".-") or up.id
    return Reference(spec=spec, name=stem[:80], path=up.path, onnx=True)


def plan_from_spec(spec: Mapping[str, Any], *, store: Store) -> FrontierPlan | None:
    """The frontier a job spec asks for (None for a single search); ConfigError names `targets` or
    `references`. Cheap: nothing is loaded (see `check_plan`)."""
    if not is_frontier(spec):
        return None
    raw_targets = list(spec.get("targets") or [spec.get("target") or _DEFAULT_TARGET])
    targets: list[str] = [_parse_target(t, i) for i, t in enumerate(raw_targets)]
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ConfigError("targets", f"{', '.join(repeated)} is given more than once; each target is one search")
    if spec.get("targets") and spec.get("target") is not None:
        given = Target.parse(str(spec["target"]))  # a bad `target` is that field's error
        if str(given) != targets[0]:
            raise ConfigError("targets", f"`target` is {given} but `targets` starts with {targets[0]}; "
                                         "give `targets` alone")
    references = [_resolve_reference(r, store) for r in spec.get("references") or []]
    seen = [r.spec for r in references]
    if len(set(seen)) != len(seen):
        raise ConfigError("references", "a reference is given more than once")
    names: set[str] = set()
    for i, ref in enumerate(references):  # two uploaded files of the same name: tell them apart
        name = ref.name
        while ref.onnx and name in names:
            name = f"{ref.name}-{len(names) + 1}"
        names.add(name)
        references[i] = replace(ref, name=name)
    return FrontierPlan(targets=tuple(targets), references=tuple(references))


def _onnx_input_dims(path: str) -> list[int | str] | None:
    """The first input's dimensions (a name for a symbolic one), None when the file does not say."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs or not inputs[0].type.HasField("tensor_type"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]


def check_plan(plan: FrontierPlan, config: SearchConfig) -> None:
    """What can be checked of the references before the job runs: each zoo reference takes the job's
    input and its weights fit it."""
    from compressor import zoo

    shape = zoo.MODELS[config.model].input_shape if config.model in zoo.MODELS else None
    for ref in plan.references:
        if ref.onnx:  # onnx.checker passed at upload; its input must take the job's images
            dims = _onnx_input_dims(ref.path)
            if shape is not None and dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]) \
                    and tuple(dims[1:]) != tuple(shape):
                raise ConfigError("references", f"{ref.spec!r}: the ONNX model takes {'x'.join(map(str, dims[1:]))} "
                                                f"inputs but {config.model} (whose data it is scored on) takes "
                                                f"{'x'.join(map(str, shape))}")
            continue
        entry = zoo.MODELS[ref.name]
        if shape is not None and tuple(entry.input_shape) != tuple(shape):
            raise ConfigError("references", f"{ref.spec!r}: {ref.name} takes {'x'.join(map(str, entry.input_shape))} "
                                            f"inputs but {config.model} (whose data it is scored on) takes "
                                            f"{'x'.join(map(str, shape))}")
        try:
            zoo.load_model(ref.name, weights=ref.path)
        except ModelLoadError as exc:
            raise ConfigError("references", f"{ref.spec!r}: {exc}") from None


class FrontierEpisodes:
    """Numbers a frontier's episodes job-wide (target i's episode e is i * episodes + e), so
    GET /jobs/{id}/episodes keeps one contiguous sequence; each record says its `target`."""

    def __init__(self, targets: tuple[str, ...] | list[str]):
        self.targets = list(targets)
        self._index = {f"search {t}": i for i, t in enumerate(self.targets)}

    def number(self, phase: str, episode: int, episodes: int) -> tuple[int, int, str] | None:
        """(job-wide number, job-wide total, target) of a search episode; None for other episodes
        (the compare baselines)."""
        i = self._index.get(phase)
        if i is None:
            return None
        return i * episodes + episode, len(self.targets) * episodes, self.targets[i]


def recovery_target(phase: str) -> str | None:
    """The target of a recovery epoch's phase (`finetune flops=0.5`), None for a single search's."""
    _, _, target = phase.partition(" ")
    return target or None


def job_targets(spec: Mapping[str, Any]) -> list[str] | None:
    """The targets of a queued frontier job's (already validated) spec; None for a single search."""
    if not is_frontier(spec):
        return None
    return [str(Target.parse(t)) for t in spec.get("targets") or [spec.get("target") or _DEFAULT_TARGET]]
