"""The REST job spec comes from SearchConfig: every field is in the spec and described in the OpenAPI
document (description, enum, bounds), the fields clients already send keep their types, defaults and
bounds, each reaches the job's config, and the closed sets are the registries' names."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
from test_server_harness import in_process_app, other_value

from compressor.config import FINETUNE_METHODS, REWARD_KINDS, STRATEGIES, SearchConfig, search_options
from server.jobs import build_config
from server.main import create_app
from server.options import search_fields


@pytest.fixture(scope="module")
def spec_schema() -> dict:
    return create_app().openapi()["components"]["schemas"]["JobSpec"]


def _value_schema(prop: dict) -> dict:
    """The non-null branch of an optional field."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    assert len(branches) == 1, prop
    return branches[0]


def test_every_search_field_is_in_the_job_spec_and_described(spec_schema):
    props = spec_schema["properties"]
    missing = [f.name for f in dataclasses.fields(SearchConfig) if f.name not in props]
    assert not missing, f"SearchConfig fields missing from the REST job spec: {missing}"
    for f, opt in search_options():
        prop = props[f.name]
        assert prop.get("description"), f.name
        value = _value_schema(prop)
        if opt.choices:
            assert value["enum"] == list(opt.choices), f.name
        for bound, key in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"),
                           ("min_length", "minLength"), ("max_length", "maxLength")):
            if getattr(opt, bound) is not None:
                assert value[key] == getattr(opt, bound), (f.name, bound)
    assert spec_schema["additionalProperties"] is False
    assert spec_schema["required"] == ["model"]


# The job spec as clients knew it before it was generated (OpenAPI, less title and description), with the
# upper bounds every number and string got when the API was made safe to expose (server.options.REST_LIMITS).
LEGACY = {
    "model": {"maxLength": 300, "minLength": 1, "type": "string"},
    "data": {"default": "digits", "maxLength": 1000, "minLength": 1, "type": "string"},
    "target": {"default": "flops=0.5", "maxLength": 100, "minLength": 1, "type": "string"},
    "reward": {"anyOf": [{"enum": ["err", "flops", "params", "latency"], "type": "string"}, {"type": "null"}]},
    "strategy": {"default": "ddpg", "enum": ["ddpg", "random", "uniform"], "type": "string"},
    "episodes": {"default": 100, "maximum": 100000, "minimum": 1, "type": "integer"},
    "device": {"default": "local", "maxLength": 300, "minLength": 1, "type": "string"},
    "seed": {"default": 0, "maximum": 2**32 - 1, "minimum": 0, "type": "integer"},
    "weights": {"anyOf": [{"maxLength": 64, "minLength": 1, "type": "string"}, {"type": "null"}]},
    "finetune_epochs": {"default": 0, "maximum": 1000, "minimum": 0, "type": "integer"},
    "compare": {"default": False, "type": "boolean"},
    "granularity": {"anyOf": [{"enum": ["channel", "weight"], "type": "string"}, {"type": "null"}]},
    "reward_samples": {"anyOf": [{"maximum": 10_000_000, "minimum": 1, "type": "integer"}, {"type": "null"}]},
    "warmup": {"anyOf": [{"maximum": 100_000, "minimum": 0, "type": "integer"}, {"type": "null"}]},
    "a_min": {"anyOf": [{"exclusiveMinimum": 0, "maximum": 1, "type": "number"}, {"type": "null"}]},
    "round_to": {"anyOf": [{"maximum": 1024, "minimum": 1, "type": "integer"}, {"type": "null"}]},
    "prune_residual": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
    "tflite": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
}


@pytest.mark.parametrize("name", list(LEGACY))
def test_fields_clients_send_keep_their_type_default_and_bounds(spec_schema, name):
    prop = {k: v for k, v in spec_schema["properties"][name].items() if k not in ("title", "description")}
    assert prop == LEGACY[name]


def test_the_closed_sets_are_the_registries():
    from compressor import finetune, rewards, strategies

    assert tuple(strategies.STRATEGY_NAMES) == STRATEGIES
    assert tuple(rewards.REWARDS) == REWARD_KINDS
    assert get_args(finetune.Method) == FINETUNE_METHODS == tuple(finetune.DEFAULT_LR)
    hints = get_type_hints(SearchConfig)
    for f, opt in search_options():  # a field typed as a Literal names the same set as its choices
        literal = [get_args(a) for a in (hints[f.name], *get_args(hints[f.name])) if get_origin(a) is Literal]
        if literal or opt.choices:
            assert literal and literal[0] == opt.choices, f.name


def test_lower_bounds_agree_with_the_configs_own_checks():
    base = {"model": "demo-cnn", "data": "digits"}
    for f in search_fields():
        lowest = f.option.ge if f.option.ge is not None else f.option.gt
        if lowest is None:
            continue
        below = f.type(lowest) - 1 if f.option.ge is not None else f.type(lowest)
        with pytest.raises(ValueError, match=f.name):
            SearchConfig(**base, **{f.name: below})
        if f.option.ge is not None:
            assert getattr(SearchConfig(**base, **{f.name: f.type(lowest)}), f.name) == lowest


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("spec") / "data") as app:
        yield app


def _dumped(spec: dict) -> dict:
    """The spec as POST /jobs hands it to the job service."""
    from server.schemas import JobSpec

    return JobSpec(**spec).model_dump(exclude_none=True)


def test_omitted_fields_take_the_search_defaults(api):
    config = build_config(_dumped({"model": "demo-cnn"}), store=api.store, settings=api.settings)
    assert config == SearchConfig(model="demo-cnn", data="digits")


@pytest.mark.parametrize("field", [f.name for f in search_fields()])
def test_each_field_reaches_the_jobs_config(api, field):
    f = next(f for f in search_fields() if f.name == field)
    value = expected = other_value(f)
    if field in ("data", "train_data"):  # a path inside the server's data roots
        value = expected = f"cifar10:{api.settings.data_root_paths[0] / 'x.npz'}"
    if field == "weights":  # the spec names an upload; the config gets its file
        up = api.store.add_upload(upload_id="w" * 32, kind="weights", filename="w.pt",
                                  size=1, sha256="0" * 64, path=f"/uploads/{field}.pt")
        value, expected = up.id, up.path
    companions = {"qat_epochs": {"quantize": "int8"},  # alone each is refused: it needs the other field
                  "train_with_search": {"train_data": f"cifar10:{api.settings.data_root_paths[0] / 'x.npz'}"}}
    spec = {"model": "demo-cnn", field: value} | companions.get(field, {})
    config = build_config(_dumped(spec), store=api.store, settings=api.settings)
    assert getattr(config, field) == expected != getattr(SearchConfig(model="demo-cnn", data="digits"), field)


def test_a_job_stores_the_config_its_spec_gives(api):
    r = api.client.post("/jobs", json={"model": "demo-cnn", "episodes": 3, "finetune_method": "plain",
                                       "prune_blocks": True, "a_min": 0.3, "reconstruct": False})
    assert r.status_code == 201, r.text
    stored = SearchConfig.from_dict(api.store.get_job(r.json()["id"]).config)
    assert stored == SearchConfig(model="demo-cnn", data="digits", episodes=3, finetune_method="plain",
                                  prune_blocks=True, a_min=0.3, reconstruct=False)
