"""Devices in this process: register the phone emulator over TCP and see its health; only TCP devices
are registered, and a job may use only devices the server knows."""

from __future__ import annotations

import pytest
from test_server_harness import SMALL_JOB, in_process_app


@pytest.fixture
def api(tmp_path):
    with in_process_app(tmp_path / "data") as app:
        yield app


def test_devices_register_the_phone_emulator_and_report_its_health(api, tmp_path):
    from device_agent.phone_sim.server import PhoneSimulator

    c = api.client
    sim = PhoneSimulator(0, tmp_path / "phone", serial="SIM-SRV", model_name="Pixel 7").start()
    try:
        listed = c.get("/devices").json()
        assert listed["devices"][0]["spec"] == "local" and listed["devices"][0]["health"] == "ok"
        r = c.post("/devices", json={"spec": sim.address, "name": "emulated Pixel 7"})
        assert r.status_code == 201, r.text
        dev = r.json()
        assert dev["spec"] == f"adb:{sim.address}" and dev["source"] == "registered"
        assert dev["health"] == "ok", dev
        assert dev["info"].get("model") == "Pixel 7"
        specs = [d["spec"] for d in c.get("/devices").json()["devices"]]
        assert f"adb:{sim.address}" in specs
        # A registered device is a valid job device; an unregistered one is refused, naming the field.
        r = c.post("/jobs", json={**SMALL_JOB, "device": f"adb:{sim.address}"})
        assert r.status_code == 201, r.text
        r = c.post("/jobs", json={**SMALL_JOB, "device": "adb:127.0.0.1:1"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "device"]
        assert "not registered" in r.json()["detail"][0]["msg"]
        r = c.post("/devices", json={"spec": "adb:SERIAL123"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "spec"
        assert "not a TCP device" in r.json()["detail"][0]["msg"]
    finally:
        sim.stop()


def test_a_device_body_with_unknown_fields_is_refused(api):
    r = api.client.post("/devices", json={"spec": "adb:127.0.0.1:5555", "colour": "red"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]
