"""The emulated phone's filesystem and shell environment.

A host folder plays `/data/local/tmp`; device paths are mapped into it and nothing outside it is
reachable through sync. Shell commands run with /bin/sh in that folder, with `/data/local/tmp` rewritten
to the folder, and a private bin folder first on PATH holding `getprop` (answers the emulated model, ABI
and serial) and `python3` (the interpreter running the emulator, so the agent finds numpy and a runtime).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

DEVICE_TMP = "/data/local/tmp"
# Other well-known device folders, mapped to sub-folders of the sandbox.
DEVICE_MOUNTS = {"/sdcard": ".sdcard", "/storage/emulated/0": ".sdcard"}



def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement that inserts `text` as it is (no backslash escapes)."""
    return lambda _match: text

class SandboxError(PermissionError):
    """A device path lies outside what the emulator exposes."""


class Sandbox:
    def __init__(self, root: Path, *, props: dict[str, str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in set(DEVICE_MOUNTS.values()):
            (self.root / folder).mkdir(exist_ok=True)
        self.props = dict(props)
        self.bin_dir = Path(tempfile.mkdtemp(prefix="phone-sim-bin-"))
        self._write_tools()

    # --- paths ------------------------------------------------------------------------------------------

    def map_path(self, device_path: str) -> Path:
        """Host path for a device path; raises SandboxError outside /data/local/tmp and /sdcard."""
        path = posixpath.normpath("/" + device_path if not device_path.startswith("/") else device_path)
        if not device_path.startswith("/"):
            # adbd resolves relative sync paths against /; we resolve them against the sandbox.
            path = posixpath.normpath(DEVICE_TMP + "/" + device_path)
        if path == DEVICE_TMP or path.startswith(DEVICE_TMP + "/"):
            rest = path[len(DEVICE_TMP) :].lstrip("/")
            return self.root / rest if rest else self.root
        for mount, folder in DEVICE_MOUNTS.items():
            if path == mount or path.startswith(mount + "/"):
                rest = path[len(mount) :].lstrip("/")
                base = self.root / folder
                return base / rest if rest else base
        raise SandboxError(
            f"{device_path}: permission denied (the phone emulator exposes only {DEVICE_TMP} and /sdcard)"
        )

    def rewrite_command(self, command: str) -> str:
        # Longest first so /storage/emulated/0 is not half-rewritten.
        replacements = [(DEVICE_TMP, str(self.root)), ("/system/bin/getprop", str(self.bin_dir / "getprop"))]
        replacements += [(mount, str(self.root / folder)) for mount, folder in DEVICE_MOUNTS.items()]
        for device, host in sorted(replacements, key=lambda pair: -len(pair[0])):
            command = re.sub(re.escape(device) + r"(?![\w.\-])", _literal(host), command)
        return command

    # --- shell environment ------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        # ANDROID_* (ANDROID_SERIAL, ANDROID_ADB_SERVER_PORT) belong to the host's adb, not to the phone.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANDROID_")}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = str(self.root)
        env["TMPDIR"] = str(self.root)
        env["ANDROID_DATA"] = "/data"
        env["ANDROID_ROOT"] = "/system"
        return env

    def _write_tools(self) -> None:
        listing = "".join(f"[{key}]: [{value}]\n" for key, value in sorted(self.props.items()))
        cases = "".join(
            f"  {shlex.quote(k)}) printf '%s\\n' {shlex.quote(v)} ;;\n" for k, v in self.props.items()
        )
        getprop = (
            "#!/bin/sh\n"
            "# getprop of the AMC phone emulator\n"
            'if [ "$#" -eq 0 ]; then\n'
            f"cat <<'PROPS'\n{listing}PROPS\n"
            "exit 0\nfi\n"
            'case "$1" in\n'
            f"{cases}"
            '  *) if [ "$#" -ge 2 ]; then printf \'%s\\n\' "$2"; else echo; fi ;;\n'
            "esac\n"
        )
        python = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n'
        for name, text in {"getprop": getprop, "python3": python, "python": python}.items():
            tool = self.bin_dir / name
            tool.write_text(text)
            tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def cleanup(self) -> None:
        shutil.rmtree(self.bin_dir, ignore_errors=True)
