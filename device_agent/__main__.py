"""`python -m device_agent bench MODEL [MODEL ...]` and `python -m device_agent info`: print exactly one JSON
object.

Whatever happens, stdout carries one JSON object (a result or an error) so the host can always parse it;
errors also set a non-zero exit status. Several models are timed one after the other in this one process (a
latency table's kernels: starting Python and importing a runtime costs more than timing a tiny model) and
reported as one `batch` object holding a result or an error for each, in order. This is the agent's
command line, so it writes to stdout itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from .schema import SCHEMA_VERSION, AgentError, UsageError, error_result

RUNTIME_CHOICES = ("onnxruntime", "litert", "tflite_runtime")


class _JsonArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as an agent error instead of a usage message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (run `python -m device_agent {self.prog.split()[-1]} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _JsonArgumentParser(prog="device_agent", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="log to stderr at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_JsonArgumentParser)
    sub.required = True

    bench = sub.add_parser("bench", help="time a model (or several, one after the other) and print the timing JSON")
    bench.add_argument("model", type=Path, nargs="+",
                       help="model file (.onnx for onnxruntime, .tflite for litert); several give one batch result")
    bench.add_argument("--runtime", default="onnxruntime", help=f"one of {', '.join(RUNTIME_CHOICES)}")
    bench.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    bench.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    bench.add_argument("--cpu-mask", default=None, help="pin to CPUs, hexadecimal mask such as 0xf0 (Linux)")
    bench.add_argument("--cooldown", type=float, default=0.0, help="seconds to idle before timing")
    bench.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    bench.add_argument("--samples", action="store_true", help="also report every timed run (samples_ms)")

    sub.add_parser("info", help="print what the device says about itself")
    return parser


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "info":
            from .deviceinfo import device_info

            _emit({"schema": SCHEMA_VERSION, "kind": "info", "ok": True, "device": device_info()})
            return 0
        from .bench import BenchConfig, run_batch, run_bench

        configs = [BenchConfig(
            model=model,
            runtime=args.runtime,
            threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
            cpu_mask=args.cpu_mask,
            cooldown_s=args.cooldown,
            seed=args.seed,
            keep_samples=args.samples,
        ) for model in args.model]
        _emit(dict(run_bench(configs[0]) if len(configs) == 1 else run_batch(configs)))
        return 0
    except AgentError as exc:
        _emit(dict(error_result(exc)))
        return exc.exit_code
    except KeyboardInterrupt:
        _emit(dict(error_result(AgentError("interrupted"))))
        return 130
    except Exception as exc:  # last resort: still one JSON object, never a bare traceback
        logging.getLogger("device_agent").debug("unexpected error", exc_info=True)
        _emit(dict(error_result(exc)))
        return 1


if __name__ == "__main__":
    sys.exit(main())
