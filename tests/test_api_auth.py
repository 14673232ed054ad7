"""The bearer token, in this process: every endpoint that changes anything answers 401 without the
token or with a wrong one, and changes nothing; reading needs no token. Token generation and the
loopback rule of `amc serve`."""

from __future__ import annotations

import stat

import pytest
from test_server_harness import SMALL_JOB, TOKEN, in_process_app

from server.core.config import Settings
from server.core.security import InsecureBindError, check_bind, ensure_token

CHANGES = [
    ("/jobs", {"json": SMALL_JOB}),
    ("/jobs/{job_id}/cancel", {}),
    ("/devices", {"json": {"spec": "adb:127.0.0.1:5555"}}),
    ("/uploads", {"files": {"file": ("w.pt", b"x")}}),
]


@pytest.fixture
def api(tmp_path):
    with in_process_app(tmp_path / "data") as app:
        yield app


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
                         ids=["none", "wrong", "not-bearer", "no-scheme"])
def test_changes_need_the_token(api, headers):
    job_id = api.client.post("/jobs", json=SMALL_JOB).json()["id"]
    anon = api.client
    anon.headers.clear()
    for path, body in CHANGES:
        r = anon.post(path.format(job_id=job_id), headers=headers, **body)
        assert r.status_code == 401, (path, r.text)
        assert "bearer" in r.json()["detail"].lower()
        assert r.headers["www-authenticate"] == "Bearer"
    assert api.store.get_job(job_id).state == "queued"  # the refused cancel changed nothing
    assert api.store.count_jobs() == {"queued": 1}  # the refused submit queued nothing
    assert not list(api.settings.uploads_dir.iterdir())  # the refused upload kept nothing


def test_reading_needs_no_token(api):
    job_id = api.client.post("/jobs", json=SMALL_JOB).json()["id"]
    anon = api.client
    anon.headers.clear()
    assert anon.get("/jobs").status_code == 200
    assert anon.get(f"/jobs/{job_id}").json()["id"] == job_id
    assert anon.get(f"/jobs/{job_id}/episodes").status_code == 200
    assert anon.get("/docs").status_code == 200
    assert "/jobs" in anon.get("/openapi.json").json()["paths"]
    assert anon.get("/").status_code == 200


def test_generated_token_is_private_and_non_loopback_needs_a_token(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", api_token=None)
    token, created = ensure_token(settings)
    assert created and len(token) >= 32
    assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600
    assert ensure_token(settings) == (token, False)  # generated once, then reused
    check_bind("127.0.0.1", settings)
    with pytest.raises(InsecureBindError, match="AMC_API_TOKEN"):
        check_bind("0.0.0.0", settings)
    check_bind("0.0.0.0", Settings(data_dir=tmp_path / "d", api_token=TOKEN))
