"""The `amc` command line. Each package registers its own sub-commands; this module only composes
them, so that `amc phone-sim` never imports torch and `amc compress` never imports FastAPI."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, sub-commands it registers). Modules are imported only when their command runs or for --help.
COMMAND_MODULES: dict[str, str] = {
    "compress": "server.compress_cli",
    "bench": "server.profiler_cli",  # profiler.cli with the model zoo composed in
    "devices": "server.profiler_cli",
    "lut": "server.profiler_cli",
    "serve": "server.serve_cli",
    "phone-sim": "device_agent.phone_sim.cli",
    "device-host": "profiler.farm.cli",
}

SUMMARIES = {
    "compress": "search a pruning policy for a model under a budget (AMC)",
    "bench": "measure a model's latency on a device",
    "devices": "list devices (local, USB phones, registered TCP devices) with health",
    "lut": "build or check a per-device latency lookup table",
    "serve": "run the REST orchestrator and web status page",
    "phone-sim": "run a phone emulator that speaks the device side of ADB over TCP (a test device: its "
                 "shell runs commands on this host)",
    "device-host": "serve this machine's phones to a Ray cluster (a phone farm; docs/FARM.md)",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amc", description="AMC Service: fit neural networks onto phones.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    owner = COMMAND_MODULES.get(only) if only is not None else None
    for module_name in dict.fromkeys(COMMAND_MODULES.values()):
        if only is None or module_name == owner:
            importlib.import_module(module_name).register(sub)  # may register several commands
    for name in COMMAND_MODULES:
        if name not in sub.choices:  # listed in help without importing its module
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMAND_MODULES:
        # Top-level help: list commands without importing their (heavy) modules.
        parser = build_parser(only="")
        if command is not None:
            parser.error(f"unknown command {command!r}; choose one of {', '.join(COMMAND_MODULES)}")
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
