"""The bearer token, in this process: every route but /healthz, the API documents and the status
page's files answers 401 without the token or with a wrong one, and changes nothing. Token generation,
the token file's safety and the loopback rule of `amc serve`."""

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


READS = ["/jobs", "/jobs/{job_id}", "/jobs/{job_id}/episodes", "/jobs/{job_id}/log",
         "/jobs/{job_id}/artifacts/model.pt", "/devices", "/devices?refresh=true"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}], ids=["none", "wrong"])
def test_reading_needs_the_token_too(api, headers):
    job_id = api.client.post("/jobs", json=SMALL_JOB).json()["id"]
    for path in READS:  # each answers with the token...
        assert api.client.get(path.format(job_id=job_id)).status_code in (200, 409), path
    anon = api.client
    anon.headers.clear()
    for path in READS:  # ...and nothing without it: not the list, specs, logs, models, devices
        r = anon.get(path.format(job_id=job_id), headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert job_id not in r.text and "demo-cnn" not in r.text


def test_every_api_route_but_healthz_needs_the_token(api):
    # Every operation of the OpenAPI document, so a route added later is covered without editing this.
    anon = api.client
    anon.headers.clear()
    paths = anon.get("/openapi.json").json()["paths"]
    checked = 0
    for path, ops in paths.items():
        url = path.replace("{job_id}", "0" * 32).replace("{name}", "report.json")
        for method in ops:
            r = anon.request(method.upper(), url)
            if path == "/healthz":
                assert r.status_code == 200
            else:
                assert r.status_code == 401, (method, path, r.status_code)
                checked += 1
            assert "401" in ops[method]["responses"] or path == "/healthz", (method, path)
    assert checked >= 9


def test_the_status_page_and_the_api_description_need_no_token(api):
    anon = api.client
    anon.headers.clear()
    for path in ("/", "/ui/jobs/0123abcd", "/static/app.js", "/static/style.css", "/docs", "/healthz"):
        assert anon.get(path).status_code == 200, path
    assert "/jobs" in anon.get("/openapi.json").json()["paths"]
    # only reading them is public: another method on a public path still needs the token
    assert anon.post("/healthz").status_code == 401


def test_generated_token_is_private_and_non_loopback_needs_a_token(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", api_token=None)
    token, created = ensure_token(settings)
    assert created and len(token) >= 32
    assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert ensure_token(settings) == (token, False)  # generated once, then reused
    check_bind("127.0.0.1", settings)
    with pytest.raises(InsecureBindError, match="AMC_API_TOKEN"):
        check_bind("0.0.0.0", settings)
    check_bind("0.0.0.0", Settings(data_dir=tmp_path / "d", api_token=TOKEN))
