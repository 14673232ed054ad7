"""`amc phone-sim` (and `python -m device_agent.phone_sim`): run phone emulators until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=5555, help="TCP port to listen on; 0 picks a free one")
    parser.add_argument(
        "--root", type=Path, required=True, help="host folder that plays the phone's /data/local/tmp"
    )
    parser.add_argument("--serial", default=None, help="ro.serialno (default PHONESIM<port>)")
    parser.add_argument("--model-name", default="AMC PhoneSim", help="ro.product.model")
    parser.add_argument("--abi", default="arm64-v8a", help="ro.product.cpu.abi")
    parser.add_argument(
        "--auth-keys",
        type=Path,
        default=None,
        help="file of allowed public keys (adbkey.pub lines); enables RSA authentication",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phone-sim",
        help="run a phone emulator that speaks the device side of ADB over TCP",
        description="Emulate an Android phone for adb and adb-shell: shell (with exit status), push/pull, "
        "RSA auth. Start several on different ports for a local phone farm.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .server import PhoneSimError, PhoneSimulator

    console = Console(highlight=False, soft_wrap=True)
    sim = PhoneSimulator(
        args.port,
        args.root,
        serial=args.serial,
        model_name=args.model_name,
        abi=args.abi,
        auth_keys=args.auth_keys,
        host=args.host,
    )
    try:
        sim.start()
    except PhoneSimError as exc:
        Console(stderr=True, highlight=False).print(f"[red]phone-sim: {exc}[/red]")
        return 1
    # Machine-readable first line: tests and scripts read the chosen port from it.
    console.print(
        f"phone-sim listening on {sim.address} serial={sim.identity.serial} root={sim.sandbox.root} "
        f"auth={'on' if sim.allowed_keys is not None else 'off'}",
        markup=False,
    )
    console.print(f"connect with: adb connect {sim.address}", markup=False)
    sys.stdout.flush()
    done = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_agent.phone_sim", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(args)
