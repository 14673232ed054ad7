"""`amc phone-sim` (and `python -m device_agent.phone_sim`): run a phone emulator until interrupted.

Its shell runs commands on this host as the user running the emulator: it is a test device, not a
sandbox. It listens on loopback unless given --auth-keys.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

DESCRIPTION = (
    "Emulate an Android phone for adb and adb-shell: shell (with exit status), push/pull, RSA auth. "
    "Start several on different ports for a local phone farm. WARNING: its shell runs commands on this "
    "host as the user running the emulator (a test device, not a sandbox); only push/pull are confined "
    "to --root. It listens on 127.0.0.1 unless --auth-keys is given."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=5555, help="TCP port to listen on; 0 picks a free one")
    parser.add_argument(
        "--root", type=Path, required=True, help="host folder that plays the phone's /data/local/tmp"
    )
    parser.add_argument("--serial", default=None, help="ro.serialno (default PHONESIM<port>)")
    parser.add_argument("--model-name", default="AMC PhoneSim", help="ro.product.model")
    parser.add_argument("--abi", default="arm64-v8a", help="ro.product.cpu.abi")
    parser.add_argument(
        "--fingerprint",
        default=None,
        help="ro.build.fingerprint (default: one per --model-name, so emulated phones of one model match)",
    )
    parser.add_argument(
        "--auth-keys",
        type=Path,
        default=None,
        help="file of allowed public keys (adbkey.pub lines); enables RSA authentication: a client gets in "
        "only by signing a token with one of these keys",
    )
    parser.add_argument(
        "--accept-new-keys",
        action="store_true",
        help="also trust any public key a client offers (a phone whose user always taps Allow); "
        "loopback only",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); any other address requires --auth-keys",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phone-sim",
        help="run a phone emulator that speaks the device side of ADB over TCP",
        description=DESCRIPTION,
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
        fingerprint=args.fingerprint,
        host=args.host,
        accept_new_keys=args.accept_new_keys,
    )
    try:
        sim.start()
    except PhoneSimError as exc:
        Console(stderr=True, highlight=False).print(f"[red]phone-sim: {exc}[/red]")
        return 1
    # Machine-readable first line: tests and scripts read the chosen port from it.
    console.print(
        f"phone-sim listening on {sim.address} serial={sim.identity.serial} root={sim.sandbox.root} "
        f"auth={sim.auth_mode}",
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
    parser = argparse.ArgumentParser(prog="python -m device_agent.phone_sim", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(args)
