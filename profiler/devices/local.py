"""This machine's CPU as a device: the agent runs as a subprocess of the current interpreter, exactly
as it runs on a phone."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from profiler.devices.base import CommandResult, Device, Health, agent_hash, agent_source_dir, parse_thermal
from profiler.errors import DeviceUnavailable


class LocalDevice(Device):
    """`local`: `sys.executable -m device_agent bench ...` on this machine."""

    kind = "local"

    def __init__(self, spec: str = "local", *, python: str | None = None, agent_root: Path | None = None,
                 benchmark_binary: str | None = None):
        super().__init__(spec, benchmark_binary=benchmark_binary)
        self.python = python or sys.executable
        # The folder that holds the device_agent package (put on PYTHONPATH for the subprocess).
        self.agent_root = Path(agent_root) if agent_root else None

    @property
    def legacy_id(self) -> str:
        return f"local:{socket.gethostname()}"

    def agent_version(self) -> str:
        return agent_hash(self._agent_parent() / "device_agent")

    def _agent_parent(self) -> Path:
        if self.agent_root is not None:
            return self.agent_root
        return agent_source_dir().parent

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self._agent_parent()), env.get("PYTHONPATH")]))
        # The agent picks its own threads; keep BLAS pools from oversubscribing.
        env.setdefault("OMP_NUM_THREADS", "1")
        # `python -m` puts the working directory first on sys.path: run from the agent's folder.
        cwd = self._agent_parent() if self._agent_parent().is_dir() else None
        try:
            proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                                  timeout=timeout_s, env=env, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            raise DeviceUnavailable(self.spec, f"command timed out after {timeout_s:.0f} s: {command[:120]}",
                                    hint="raise the timeout or lower --runs") from exc
        except OSError as exc:
            raise DeviceUnavailable(self.spec, f"cannot start a shell: {exc}") from exc
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def model_path_on_device(self, model_path: Path, sha256: str) -> str:
        return str(Path(model_path).resolve())

    def agent_command(self) -> str:
        return f"{shlex.quote(self.python)} -m device_agent"

    def temperature_c(self) -> float | None:
        zones = sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp"))
        text = []
        for zone in zones:
            try:
                text.append(zone.read_text().strip())
            except OSError:
                continue
        return parse_thermal(" ".join(text))

    def health(self) -> Health:
        health = super().health()
        health.info.update({"machine": platform.machine(), "cpus": os.cpu_count(),
                            "python": platform.python_version()})
        if health.ok and not Path(self._agent_parent(), "device_agent").is_dir():
            health.ok, health.detail = False, f"no device_agent package under {self._agent_parent()}"
        return health
