"""What runs on a phone (or any Linux device): time a model with ONNX Runtime or LiteRT, print one JSON result.

Depends only on the standard library, numpy and an inference runtime, so the folder can be copied alone
onto a device and run as ``python3 -m device_agent bench MODEL ...`` from its parent folder. The phone
emulator used in tests lives in ``device_agent.phone_sim``. Importing this package imports nothing heavy.
"""

from pathlib import Path

__version__ = "0.1.0"

# What a phone needs: the agent's modules (the emulator in phone_sim/ stays on the host).
AGENT_MODULES = ("__init__.py", "__main__.py", "bench.py", "deviceinfo.py", "runtimes.py", "schema.py")


def agent_files() -> list[Path]:
    """Paths of the files to push to a device as `<dir>/device_agent/`; the emulator is not among them."""
    here = Path(__file__).resolve().parent
    return [here / name for name in AGENT_MODULES]
