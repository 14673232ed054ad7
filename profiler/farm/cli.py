"""`amc device-host`: run on each USB host of a phone farm (see docs/FARM.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `device-host` to the `amc` command line."""
    if "device-host" in subparsers.choices:  # the composer's placeholder
        subparsers.choices.pop("device-host")
        subparsers._choices_actions[:] = [a for a in subparsers._choices_actions if a.dest != "device-host"]
    p = subparsers.add_parser(
        "device-host", help="serve this machine's phones to a Ray cluster (a phone farm)",
        description="Join the Ray cluster at --address and serve every phone of this machine (USB phones, and "
                    "the --device phones and emulators reached over TCP) as a Ray actor, re-scanning every few "
                    "seconds. This machine must run a Ray node of the cluster (`ray start --address ADDRESS`). "
                    "Ray has no authentication unless every process runs with RAY_AUTH_MODE=token and the "
                    "cluster's RAY_AUTH_TOKEN: the host refuses to join otherwise, unless "
                    "--insecure-ray-network. Stop with Ctrl-C or SIGTERM: its phones leave the cluster.")
    p.add_argument("--address", required=True, metavar="HOST:PORT", help="the Ray head's GCS address")
    p.add_argument("--device", action="append", default=[], metavar="SPEC",
                   help="a phone to serve besides USB ones: adb:HOST:PORT (TCP phone or `amc phone-sim`) or "
                        "adb:SERIAL; repeat for several")
    p.add_argument("--usb", action=argparse.BooleanOptionalAction, default=True,
                   help="serve the phones found on USB (default: yes)")
    p.add_argument("--name", default=None, help="this host's name in the listing (default: the hostname)")
    p.add_argument("--scan-s", type=float, default=3.0, metavar="S", help="seconds between scans (default 3)")
    p.add_argument("--python", default="python3", help="Python command on the phones (default python3)")
    p.add_argument("--adb-key", type=Path, default=None, help="ADB private key (default ~/.config/amc/adbkey)")
    p.add_argument("--lease-ttl-s", type=float, default=60.0, metavar="S",
                   help="a lease not used for this long lapses (a client that died; default 60)")
    p.add_argument("--insecure-ray-network", action="store_true",
                   help="join a Ray cluster without token authentication (only on a network you trust)")
    p.add_argument("--once", action="store_true", help="scan once, print what is served, and exit")
    p.set_defaults(func=run_device_host)


def run_device_host(args: argparse.Namespace) -> int:
    from rich.console import Console

    from compressor.errors import AmcError
    from profiler.devices.keys import ensure_adb_key
    from profiler.farm.host import DeviceHost
    from profiler.farm.names import insecure_from_env

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if args.scan_s <= 0:
        console.print("error: --scan-s must be a positive number of seconds", markup=False)
        return 2
    stop = threading.Event()
    host = None
    try:
        key = ensure_adb_key(args.adb_key)  # the actors run in other processes: they get the path
        host = DeviceHost(args.address, specs=args.device, usb=args.usb, name=args.name,
                          device_options={"key_path": key, "python": args.python},
                          insecure=args.insecure_ray_network or insecure_from_env(),
                          lease_ttl_s=args.lease_ttl_s, on_event=lambda m: console.log(m, markup=False))
        with console.status(f"joining the Ray cluster at {args.address}"):
            host.connect()
        console.log(f"joined {args.address} as host {host.name}", markup=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        with console.status("scanning for phones") as status:
            while not stop.is_set():
                host.scan()
                status.update(f"serving {len(host.served)} phone(s) as {host.name}; next scan in {args.scan_s:g} s"
                              + (f" ({'; '.join(host.notes)})" if host.notes else ""))
                if args.once:
                    break
                stop.wait(args.scan_s)
        for note in host.notes:
            console.log(f"note: {note}", markup=False)
    except AmcError as exc:
        console.print(f"error: {exc}", markup=False)
        return 1
    finally:
        if host is not None:
            host.close()
    return 0
