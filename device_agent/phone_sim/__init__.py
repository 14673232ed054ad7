"""A phone emulator: the device side of the ADB protocol over TCP, so the whole phone path (adb connect,
shell with exit status, push/pull, RSA auth, the device agent) runs and is tested without a phone.

    sim = PhoneSimulator(0, "/tmp/phone").start()   # then: adb connect 127.0.0.1:<sim.port>
    ...
    sim.stop()
"""

from .server import DeviceIdentity, PhoneSimError, PhoneSimulator

__all__ = ["DeviceIdentity", "PhoneSimError", "PhoneSimulator"]
