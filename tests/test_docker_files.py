"""Static checks of docker/ (no image is built here; `make images` builds and smoke-tests them): the compose
file names a head and two device hosts with Ray token authentication and USB access, the Dockerfiles pin
torch to the CPU build with its index as a build argument, and the entry points refuse Ray without a token."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = ("Dockerfile.server", "Dockerfile.device-host")


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_a_head_and_two_device_hosts_with_ray_tokens_and_usb() -> None:
    services = _compose()["services"]
    assert set(services) == {"head", "device-host-a", "device-host-b"}
    assert services["head"]["command"] == ["amc-head"]
    for name, service in services.items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name
    for name in ("device-host-a", "device-host-b"):
        host = services[name]
        assert host["environment"]["AMC_RAY_ADDRESS"] == "head:6379"
        assert host["command"].startswith(f"amc-device-host --name usb-{name[-6:]}")
        assert "/dev/bus/usb:/dev/bus/usb" in host["volumes"] and "c 189:* rmw" in host["device_cgroup_rules"]
        assert host["depends_on"]["head"]["condition"] == "service_healthy"
        assert host["build"]["dockerfile"] == "docker/Dockerfile.device-host"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_pins_cpu_torch_from_a_build_argument_and_installs_no_dev_extras(name: str) -> None:
    text = (DOCKER / name).read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    installs = re.findall(r"pip install ([^\n&]+)", text)
    assert installs[0].startswith('torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}'), installs
    assert not any("test" in i or "-e " in i for i in installs), installs  # no dev extras, no editable install
    assert "--index-url" not in text.replace("${TORCH_INDEX_URL:+--index-url", ""), "an index URL not from a build arg"
    ignored = (DOCKER / f"{name}.dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:] and "!.venv" not in ignored  # allow-list: .venv and runs/ stay out
    for copied in re.findall(r"^COPY (?:--\S+ )*(\S+)", text, flags=re.M):
        assert copied in ("pyproject.toml", "README.md", "./") or f"!{copied}" in ignored or copied.startswith("docker/")


def test_device_host_image_has_ray_adb_and_libusb() -> None:
    text = (DOCKER / "Dockerfile.device-host").read_text()
    assert re.search(r"apt-get install[^\n]*\badb\b[^\n]*\blibusb-1\.0-0\b", text)
    assert 'pip install ".[farm]"' in text


@pytest.mark.parametrize("script", ["head.sh", "device-host.sh"])
def test_entry_points_refuse_ray_without_a_token(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AMC_RAY"))}
    env |= {"AMC_RAY_ADDRESS": "127.0.0.1:6379", "PATH": str(tmp_path)}  # no ray, no amc: it stops first
    out = subprocess.run(["/bin/sh", str(DOCKER / script)], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "RAY_AUTH_MODE=token" in out.stderr, out.stderr
