"""Devices: list with health, register a TCP device (in this server's data dir)."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from server.api.deps import Authorized, KnownQuery, ServiceDep
from server.api.responses import GUARDED, responses
from server.schemas import DeviceIn, DeviceList, DeviceOut

router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[Authorized, KnownQuery], responses={**GUARDED, **responses(422)})


@router.get("", response_model=DeviceList)
def list_devices(service: ServiceDep, refresh: bool = Query(False, description="re-check health now")) -> DeviceList:
    """Devices a job can use (`local`, USB phones, registered TCP devices; with a phone farm, every phone of the cluster with its host and lease) with their health."""
    found, notes = service.devices.list(refresh=refresh)
    return DeviceList(devices=[DeviceOut(**d.to_dict()) for d in found], notes=notes)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeviceOut)
def register_device(body: DeviceIn, service: ServiceDep) -> DeviceOut:
    """Register a device reachable over TCP (`adb:HOST:PORT`), e.g. a phone with `adb tcpip` or `amc phone-sim`."""
    return DeviceOut(**service.devices.register(body.spec, body.name).to_dict())
