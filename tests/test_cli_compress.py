"""`amc compress`'s flags come from SearchConfig: every field has a flag, every flag users already
rely on keeps its name and meaning, and each flag reaches the search's config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from test_server_harness import other_value

from compressor.config import SearchConfig
from compressor.errors import ConfigError
from server import compress_cli
from server.options import config_from_args, search_fields

REQUIRED = ["--model", "demo-cnn", "--data", "digits"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amc")
    compress_cli.register(parser.add_subparsers())
    return parser


def _config(*argv: str) -> SearchConfig:
    return config_from_args(_parser().parse_args(["compress", *argv]))


def _compress_actions() -> list[argparse.Action]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["compress"]._actions


def test_every_search_field_has_a_flag():
    dests = {a.dest for a in _compress_actions()}
    missing = [f.name for f in dataclasses.fields(SearchConfig) if not {f.name, f"no_{f.name}"} & dests]
    assert not missing, f"SearchConfig fields without an `amc compress` flag: {missing}"
    helpless = [a.option_strings[0] for a in _compress_actions() if a.option_strings and not a.help]
    assert not helpless, f"flags without help: {helpless}"


# Every flag `amc compress` had before the flags were generated, and what it does.
LEGACY = [
    (["--weights", "w.pt"], {"weights": "w.pt"}),
    (["--target", "params=0.3"], {"target": "params=0.3"}),
    (["--reward", "latency"], {"reward": "latency"}),
    (["--strategy", "random"], {"strategy": "random"}),
    (["--episodes", "7"], {"episodes": 7}),
    (["--warmup", "3"], {"warmup": 3}),
    (["--no-uniform-prior"], {"uniform_prior": False}),
    (["--no-local-moves"], {"local_moves": False}),
    (["--device", "adb:10.0.0.2:5555"], {"device": "adb:10.0.0.2:5555"}),
    (["--seed", "5"], {"seed": 5}),
    (["--granularity", "weight"], {"granularity": "weight"}),
    (["--a-min", "0.3"], {"a_min": 0.3}),
    (["--round-to", "4"], {"round_to": 4}),
    (["--no-reconstruct"], {"reconstruct": False}),
    (["--no-bn-recalibration"], {"bn_recalibration": False}),
    (["--prune-residual"], {"prune_residual": True}),
    (["--reward-samples", "64"], {"reward_samples": 64}),
    (["--finetune-epochs", "2"], {"finetune_epochs": 2}),
    (["--compare"], {"compare": True}),
    (["--tflite"], {"tflite": True}),
    (["--finetune-method", "plain"], {"finetune_method": "plain"}),
    (["--prune-blocks"], {"prune_blocks": True}),
]


@pytest.mark.parametrize(("argv", "changed"), LEGACY, ids=lambda v: v[0] if isinstance(v, list) else "")
def test_a_flag_changes_its_field_and_nothing_else(argv, changed):
    config = _config(*REQUIRED, *argv)
    assert config == dataclasses.replace(SearchConfig(model="demo-cnn", data="digits"), **changed)


def test_defaults_are_the_search_defaults_and_the_other_flags_stay():
    assert _config(*REQUIRED) == SearchConfig(model="demo-cnn", data="digits")
    args = _parser().parse_args(["compress", *REQUIRED, "--out", "runs/x", "--resume", "runs/y", "--json"])
    assert (args.out, args.resume, args.json) == ("runs/x", "runs/y", True)
    assert _parser().parse_args(["compress", *REQUIRED]).out == "runs/latest"


def test_a_closed_set_refuses_other_names(capsys):
    for flag in ("--strategy", "--reward", "--granularity", "--finetune-method"):
        with pytest.raises(SystemExit):
            _config(*REQUIRED, flag, "nonsense")
        assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["model", "data"])
def test_model_and_data_are_required_naming_the_flag(missing):
    argv = list(REQUIRED)
    i = argv.index(f"--{missing}")
    del argv[i:i + 2]
    with pytest.raises(ConfigError, match=f"--{missing} is required") as err:
        _config(*argv)
    assert err.value.field == missing


def test_run_reports_a_bad_value_and_exits_2(capsys):
    args = _parser().parse_args(["compress", *REQUIRED, "--episodes", "0"])
    assert compress_cli.run(args) == 2
    assert "episodes: must be between 1 and 100000" in capsys.readouterr().err


@pytest.mark.parametrize("field", [f.name for f in search_fields()])
def test_each_field_reaches_the_config_from_its_flag(field):
    f = next(f for f in search_fields() if f.name == field)
    value = other_value(f)
    argv = [f.flag] if f.type is bool else [f.flag, str(value)]
    if field == "qat_epochs":
        argv += ["--quantize", "int8"]  # it prepares an int8 model: alone it is refused
    if field == "train_with_search":
        argv += ["--train-data", "cifar10:/tmp/train.npz"]  # it adds images to the training data
    base = SearchConfig(model="demo-cnn", data="digits")
    assert getattr(_config(*REQUIRED, *argv), field) == value != getattr(base, field)
