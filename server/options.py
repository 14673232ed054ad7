"""The search surface: SearchConfig's fields as `amc compress` flags and as the REST job spec.

Both are generated from the fields and their `Option` (compressor/config.py), and a job spec turns
back into a SearchConfig by the same list, so a field added there reaches the command line, POST /jobs
and the job worker with no other change.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from compressor.config import FIELD_DEFAULT, Option, SearchConfig, search_options
from compressor.errors import ConfigError

if TYPE_CHECKING:  # `amc compress` needs no pydantic
    from pydantic import BaseModel

    from server.core.config import Settings
    from server.store import Store


@dataclass(frozen=True)
class SearchOption:
    """One SearchConfig field as users see it: its value type, closed set, default and Option."""

    name: str
    type: type  # str, int, float or bool
    choices: tuple[str, ...] | None
    nullable: bool  # None is a value of the field
    default: Any  # dataclasses.MISSING: required
    option: Option

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def negated(self) -> bool:
        """A bool that defaults to True is offered as a `--no-...` flag that turns it off."""
        return self.type is bool and self.default is True

    @property
    def flag(self) -> str:
        return self.option.flag or ("--no-" if self.negated else "--") + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return f"no_{self.name}" if self.negated else self.name


def _value_type(hint: Any) -> tuple[type, tuple[str, ...] | None, bool]:
    """(value type, Literal choices, nullable) of a field's annotation."""
    nullable = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        nullable = len(args) < len(get_args(hint))
        if len(args) != 1:
            raise TypeError(f"a search option has one value type, not {hint}")
        hint = args[0]
    if get_origin(hint) is Literal:
        choices = tuple(get_args(hint))
        return type(choices[0]), choices, nullable
    if hint not in (str, int, float, bool):
        raise TypeError(f"a search option is a str, int, float, bool or Literal, not {hint}")
    return hint, None, nullable


@cache
def search_fields() -> tuple[SearchOption, ...]:
    """Every SearchConfig field, in declaration order."""
    hints = get_type_hints(SearchConfig)
    out = []
    for f, opt in search_options():
        value_type, literal, nullable = _value_type(hints[f.name])
        out.append(SearchOption(name=f.name, type=value_type, choices=opt.choices or literal, nullable=nullable,
                                default=f.default, option=opt))
    return tuple(out)


# ------------------------------------------------------------------------------------------- CLI

def add_search_arguments(parser: argparse.ArgumentParser, *, repeatable: tuple[str, ...] = ()) -> None:
    """One flag per SearchConfig field (`--a-min`, `--no-reconstruct`, ...). Fields named in
    `repeatable` may be given several times (a list, None when absent); the caller picks one per config."""
    for f in search_fields():
        text = f.option.flag_help or f.option.help
        if f.name in repeatable:
            parser.add_argument(f.flag, dest=f.dest, type=f.type, action="append", default=None,
                                help=f"{text} (repeatable; default {f.default})")
        elif f.type is bool:
            parser.add_argument(f.flag, dest=f.dest, action="store_true", help=text)
        else:
            parser.add_argument(f.flag, dest=f.dest, type=f.type, choices=f.choices,
                                default=None if f.required else f.default, help=text)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The SearchConfig of parsed `amc compress` arguments; ConfigError names a missing required flag."""
    values: dict[str, Any] = {}
    for f in search_fields():
        value = getattr(args, f.dest)
        if isinstance(value, list):  # a repeatable flag: this config takes the first value
            value = value[0] if value else None
        if value is None and not f.required and not f.nullable:
            value = f.default
        if f.required and value is None:
            raise ConfigError(f.name, f"{f.flag} is required")
        values[f.name] = not value if f.negated else value
    return SearchConfig(**values)


# ------------------------------------------------------------------------------------------ REST

def _spec_field(f: SearchOption) -> tuple[Any, Any]:
    from pydantic import Field

    opt = f.option
    default = f.default if opt.spec_default is FIELD_DEFAULT else opt.spec_default
    value_type: Any = Literal[f.choices] if f.choices else f.type
    if f.nullable or default is None:
        value_type = value_type | None
    description = opt.spec_help or opt.help
    if default is None and f.default not in (None, MISSING):
        description += f" (omitted: {str(f.default).lower() if f.type is bool else f.default})"
    bounds = {k: getattr(opt, k) for k in ("ge", "gt", "le", "min_length", "max_length")
              if getattr(opt, k) is not None} | REST_LIMITS.get(f.name, {})
    return value_type, Field(... if default is MISSING else default, description=description, **bounds)


# What a job spec may carry beyond the Options' own bounds: every number and string a client sends over
# HTTP is bounded, so nothing out of range reaches the worker (a seed numpy refuses, a megabyte of target).
REST_LIMITS: dict[str, dict[str, int]] = {
    "seed": {"ge": 0, "le": 2**32 - 1},  # what numpy's and torch's generators take
    "target": {"min_length": 1, "max_length": 100},
    "device": {"min_length": 1, "max_length": 300},
    "weights": {"min_length": 1, "max_length": 64},  # an upload id
    "round_to": {"le": 1024},
    "warmup": {"le": 100_000},
    "reward_samples": {"le": 10_000_000},
    "measure_top": {"le": 100},
}

# A frontier (one search per target, plus reference models): fields of the job spec that are not
# SearchConfig's; the job service turns them into `compressor.frontier.run_frontier`'s arguments.
MAX_TARGETS = 8
MAX_REFERENCES = 8


def _frontier_fields() -> dict[str, tuple[Any, Any]]:
    from pydantic import Field, StringConstraints

    item = Annotated[str, StringConstraints(min_length=1, max_length=300)]
    return {
        "targets": (list[item] | None, Field(
            None, min_length=1, max_length=MAX_TARGETS,
            description="a frontier: one search per target (each like `target`, no repeats), sharing the setup, "
                        "each into its own folder, plus frontier.json/.svg (accuracy against measured latency); "
                        "instead of `target` (`amc compress --target ... --target ...`)")),
        "references": (list[item] | None, Field(
            None, max_length=MAX_REFERENCES,
            description="models a user could pick instead, scored on the same split and timed on the same "
                        "device: `NAME=UPLOAD_ID` (a zoo model with weights uploaded with POST /uploads) or the "
                        "id of an uploaded .onnx file; makes the job a frontier (`amc compress --reference`)")),
    }


# How long a job waits for its device when it stops answering (profiler.waiting); not SearchConfig's:
# the search never sees devices.
DEFAULT_DEVICE_WAIT_S = 600.0
MAX_DEVICE_WAIT_S = 7 * 24 * 3600.0


def _job_fields() -> dict[str, tuple[Any, Any]]:
    from pydantic import Field

    return {
        "device_wait_s": (float | None, Field(
            None, ge=0, le=MAX_DEVICE_WAIT_S,
            description="how long the job waits for its device when it stops answering (unplugged, rebooting, "
                        "its farm host gone) while the latency table is built or a model is measured; its phase "
                        "says 'waiting for device ...' meanwhile. Past it the job fails, keeping its work: "
                        f"POST /jobs/{{id}}/resume when the device is back (omitted: {DEFAULT_DEVICE_WAIT_S:.0f}; "
                        "`amc compress --device-wait-s`)")),
    }


def device_wait_s(spec: Mapping[str, Any]) -> float:
    """The job spec's `device_wait_s`, or the default."""
    value = spec.get("device_wait_s")
    return DEFAULT_DEVICE_WAIT_S if value is None else float(value)


def is_frontier(spec: Mapping[str, Any]) -> bool:
    """A job spec asks for a frontier when it has `targets` or `references`."""
    return bool(spec.get("targets") or spec.get("references"))


def job_spec_model() -> type[BaseModel]:
    """The REST job spec (`JobSpec`): one field per SearchConfig field, with its description,
    choices and bounds in the OpenAPI document, plus the frontier's `targets` and `references`;
    unknown fields are refused."""
    from pydantic import BaseModel, ConfigDict, create_model, model_validator

    class SpecBase(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [
                {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg", "episodes": 20,
                 "device": "local", "seed": 0},
                {"model": "demo-cnn", "data": "digits", "targets": ["flops=0.6", "flops=0.3"], "episodes": 20,
                 "finetune_epochs": 2, "references": ["demo-cnn=UPLOAD_ID"]},
            ]},
        )

        @model_validator(mode="after")
        def _target_of_a_frontier(self) -> Any:
            # With `targets`, `target` (the search's own config) is their first; one given as well
            # and different is refused by the job service, naming `targets`.
            targets = getattr(self, "targets", None)
            if targets and "target" not in self.model_fields_set:
                self.target = targets[0]
            return self

    fields: dict[str, Any] = ({f.name: _spec_field(f) for f in search_fields()} | _frontier_fields()
                              | _job_fields())
    return create_model(
        "JobSpec",
        __base__=SpecBase,
        __module__="server.schemas",
        __doc__="A search to run, or a frontier of searches. The strings are the ones `amc compress` takes.",
        **fields,
    )


def config_values(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The SearchConfig values a job spec sets (a field omitted or null keeps the search's default)."""
    return {f.name: spec[f.name] for f in search_fields() if spec.get(f.name) is not None}


def check_model_factory(model: str, allowed_modules: Sequence[str]) -> None:
    """A `package.module:factory` spec imports and calls code in the server: only from modules the
    operator allow-listed (AMC_ALLOWED_MODEL_MODULES, with their submodules). Zoo names pass."""
    if ":" not in model or model.startswith("upload:"):
        return
    module = model.partition(":")[0].strip()
    if any(module == m or module.startswith(m + ".") for m in allowed_modules):
        return
    allowed = f"this server allows: {', '.join(allowed_modules)}" if allowed_modules else "this server allows none"
    raise ConfigError("model", f"{model!r} is a model factory; over HTTP a factory runs only from modules the "
                               f"operator allow-listed in AMC_ALLOWED_MODEL_MODULES ({allowed}). Use a zoo model "
                               "name with your weights uploaded with POST /uploads as `weights`, or run "
                               "`amc compress --model package.module:factory` on your own machine")


def resolve_data(data: str, roots: Sequence[Path], *, field: str = "data") -> str:
    """A data spec whose path lies inside one of `roots` (links followed; a relative path is taken from
    the first root), with that path made absolute; ConfigError otherwise, the same whether or not the
    path exists, so the answer says nothing about files outside the roots."""
    kind, sep, arg = data.partition(":")
    if not sep or not arg:
        return data  # `digits`, or a spec the data loader refuses naming the accepted forms
    outside = ConfigError(field, f"{arg!r} is not inside a folder this server reads data from "
                                  f"({', '.join(str(r) for r in roots)}); put the data set there, or ask the "
                                  "operator to add its folder to AMC_DATA_ROOTS")
    if "\0" in arg:
        raise outside
    path = Path(arg)
    resolved = (path if path.is_absolute() else roots[0] / path).resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise outside
    return f"{kind}:{resolved}"


def build_config(spec: dict[str, Any], *, store: Store, settings: Settings) -> SearchConfig:
    """Turn a job spec (the same strings as `amc compress`) into a SearchConfig, resolving uploads,
    refusing model factories the operator did not allow and data outside the data roots.
    A frontier's config is its first target's (`plan_from_spec` gives the rest)."""
    values = config_values(spec)
    if spec.get("targets"):
        values["target"] = spec["targets"][0]
    model = str(values.get("model", ""))
    check_model_factory(model, settings.allowed_model_modules)
    if "data" in values:
        values["data"] = resolve_data(str(values["data"]), settings.data_root_paths)
    if values.get("train_data"):
        values["train_data"] = resolve_data(str(values["train_data"]), settings.data_root_paths,
                                            field="train_data")
    if model.startswith("upload:"):
        up = store.get_upload(model.removeprefix("upload:"))
        if up is None:
            raise ConfigError("model", f"no upload {model!r}; upload a file with POST /uploads first")
        raise ConfigError("model", f"{model} is an uploaded {up.kind} file; searching needs a zoo model "
                                   "name or factory as `model` and the uploaded weights' id as `weights`")
    if spec.get("weights"):
        up = store.get_upload(str(spec["weights"]))
        if up is None:
            raise ConfigError("weights", f"no upload {spec['weights']!r}; upload weights with POST /uploads")
        if up.kind != "weights":
            raise ConfigError("weights", f"upload {up.id} is an {up.kind} file, not PyTorch weights")
        values["weights"] = up.path
    if int(values.get("episodes", 1)) > settings.max_episodes:
        raise ConfigError("episodes", f"at most {settings.max_episodes} episodes per job on this server")
    return SearchConfig.from_dict(values)
