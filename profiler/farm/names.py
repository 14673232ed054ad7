"""Names the farm shares between device hosts and clients: the Ray namespace, phone actor names, phone
model slugs (`model:Pixel_7`), and the check of a Ray address against the security policy."""

from __future__ import annotations

import os
import re

from compressor.errors import ConfigError

NAMESPACE = "amc-farm"
ADDRESS_ENV = "AMC_RAY_ADDRESS"
# Actors of the farm are named `phone|<host>|<device spec>`: a client lists them by this prefix.
PHONE_PREFIX = "phone|"
MODEL_PREFIX = "model:"

_SLUG = re.compile(r"[^A-Za-z0-9]+")


def model_slug(model: str | None) -> str:
    """`ro.product.model` as a name without spaces or punctuation (`Pixel 7` -> `Pixel_7`)."""
    return _SLUG.sub("_", model or "").strip("_")[:60] or "unknown"


def phone_actor_name(host: str, spec: str) -> str:
    return f"{PHONE_PREFIX}{host}|{spec}"


def parse_model_spec(spec: str) -> str | None:
    """The model slug of a `model:NAME` device spec, None for any other spec; ConfigError when empty."""
    text = spec.strip()
    if not text.startswith(MODEL_PREFIX):
        return None
    name = text[len(MODEL_PREFIX):]
    if not name or model_slug(name) == "unknown":
        raise ConfigError("device", f"{spec!r} names no phone model; use model:NAME with NAME as `amc devices` "
                                    "lists it (e.g. model:Pixel_7)")
    return model_slug(name)


def farm_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to use: `explicit` (a `--ray` flag), else `$AMC_RAY_ADDRESS`; None: no farm."""
    value = explicit if explicit is not None else os.environ.get(ADDRESS_ENV)
    value = (value or "").strip()
    return value or None


def ray_token_auth_enabled() -> bool:
    """Whether this process (and the Ray processes it starts) use Ray's token authentication."""
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"


def check_ray_address(address: str, *, insecure: bool = False) -> str:
    """`address` if it is a `HOST:PORT` the policy allows. Ray's processes listen on every interface
    whatever address the head was given, and whoever reaches them can run code on every node: the farm
    joins a cluster only with Ray's token authentication on (`RAY_AUTH_MODE=token` and a token), unless
    the operator says the network is trusted (`insecure`)."""
    text = address.strip()
    if text == "auto" or text.startswith("ray://"):
        raise ConfigError("ray", f"{address!r}: give the head's GCS address as HOST:PORT (what `ray start --head` "
                                 "printed), not 'auto' or a ray:// client address")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("ray", f"{address!r} is not a Ray address; use HOST:PORT, e.g. 10.0.0.5:6379")
    if not ray_token_auth_enabled() and not insecure:
        raise ConfigError("ray", "Ray's token authentication is off (RAY_AUTH_MODE is not 'token'): anyone who "
                                 "reaches the cluster's ports, which Ray opens on every interface, could run code "
                                 "on this machine. Start every Ray process and this one with RAY_AUTH_MODE=token "
                                 "and the cluster's RAY_AUTH_TOKEN (docs/FARM.md), or, on a network you trust, "
                                 "pass --insecure-ray-network (AMC_RAY_INSECURE=1)")
    return text


def insecure_from_env() -> bool:
    """`AMC_RAY_INSECURE=1`: the operator accepts a Ray cluster without authentication."""
    return os.environ.get("AMC_RAY_INSECURE", "").strip().lower() in ("1", "true", "yes")
