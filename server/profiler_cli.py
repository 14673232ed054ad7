"""`amc bench`, `amc devices` and `amc lut build|check` as `amc` runs them: the profiler's command line
(`profiler.cli`) with the search's model zoo composed in, so that model names (`demo-cnn`,
`package.module:factory`) work there while the profiler itself never imports the zoo."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from profiler import cli

if TYPE_CHECKING:
    import torch
    from torch import nn


def zoo_model(spec: str) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model (or a user's `package.module:factory`) in eval mode, with a random example input."""
    import torch

    from compressor.zoo import load_model

    torch.manual_seed(0)  # the same zoo name exports to the same file, so the cache recognises it
    loaded = load_model(spec)
    example = torch.randn(1, *loaded.entry.input_shape)
    return loaded.model.eval(), example


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the profiler's commands to the `amc` command line, with zoo models."""
    cli.register(subparsers, load_model=zoo_model)


def main(argv: list[str] | None = None) -> int:
    """`python -m server.profiler_cli ...`: the profiler's commands, with zoo models, without the rest of `amc`."""
    return cli.main(argv, load_model=zoo_model)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
