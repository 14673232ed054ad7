"""Devices: list with health, register a TCP device."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool

from server import devices
from server.api.deps import Authorized, StoreDep
from server.api.errors import DOMAIN_ERRORS, to_http
from server.schemas import DeviceIn, DeviceOut

router = APIRouter(prefix="/devices", tags=["devices"])


@router.get("", response_model=list[DeviceOut])
async def list_devices(store: StoreDep) -> list[DeviceOut]:
    """Devices a job can use (`local`, registered TCP devices, USB phones) with their health."""
    found = await run_in_threadpool(devices.list_devices, store)
    return [DeviceOut(**d.to_dict()) for d in found]


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Authorized], response_model=DeviceOut)
def register_device(body: DeviceIn, store: StoreDep) -> DeviceOut:
    """Register a device reachable over TCP (`adb:HOST:PORT`)."""
    try:
        return DeviceOut(**devices.register_device(store, body.spec, body.name).to_dict())
    except DOMAIN_ERRORS as exc:
        raise to_http(exc) from None
