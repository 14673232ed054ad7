"""What runs on a phone (or any Linux device): time a model with ONNX Runtime or LiteRT, print one JSON result.

Depends only on the standard library, numpy and an inference runtime, so the folder can be copied alone
onto a device and run as ``python3 -m device_agent bench MODEL ...`` from its parent folder. The phone
emulator used in tests lives in ``device_agent.phone_sim``. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
