"""The exception handlers: each domain error becomes its status code and body wherever a route lets
it through (here POST /jobs/{id}/cancel, with a job service that raises it)."""

from __future__ import annotations

import pytest
from test_server_harness import in_process_app

from compressor.errors import AmcError, BudgetInfeasible, ConfigError, ModelLoadError
from profiler.errors import DeviceUnavailable, MeasurementError
from server.api import deps
from server.api.errors import STATUS
from server.jobs import ArtifactNotFound, ArtifactNotReady
from server.store import InvalidTransition, JobNotFound, JobState
from server.uploads import UploadRejected, UploadTooLarge

PLAIN = [  # (error, status); body {"detail": str(error)}
    (JobNotFound("j1"), 404),
    (ArtifactNotFound("x.bin"), 404),
    (InvalidTransition("j1", JobState.SUCCEEDED, JobState.CANCELLED), 409),
    (ArtifactNotReady("j1", JobState.RUNNING), 409),
    (UploadTooLarge("too large"), 413),
    (DeviceUnavailable("adb:SERIAL", "not connected"), 503),
    (MeasurementError("adb:SERIAL", "agent crashed"), 502),
    (ModelLoadError("broken factory"), 500),
    (AmcError("something the route did not expect"), 500),
]
FIELD = [  # (error, status, loc, type); body in FastAPI's 422 shape
    (ConfigError("target", "flops=2 keeps more than the whole model"), 422, ["body", "target"], "ConfigError"),
    (BudgetInfeasible("flops=0.01 cannot be reached"), 422, ["body", "target"], "BudgetInfeasible"),
    (UploadRejected("not a weights file"), 422, ["body", "file"], "UploadRejected"),
]


class Raising:
    def __init__(self, exc: Exception):
        self.exc = exc

    def cancel(self, job_id: str):
        raise self.exc


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with in_process_app(tmp_path_factory.mktemp("errors") / "data") as app:
        yield app


@pytest.mark.parametrize(("exc", "code"), PLAIN, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "")
def test_a_domain_error_becomes_its_status(api, exc, code):
    api.app.dependency_overrides[deps.get_service] = lambda: Raising(exc)
    r = api.client.post("/jobs/j1/cancel")
    assert r.status_code == code
    assert r.json() == {"detail": str(exc)}


@pytest.mark.parametrize(("exc", "code", "loc", "kind"), FIELD,
                         ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "")
def test_a_field_error_becomes_a_422_naming_the_field(api, exc, code, loc, kind):
    api.app.dependency_overrides[deps.get_service] = lambda: Raising(exc)
    r = api.client.post("/jobs/j1/cancel")
    assert r.status_code == code
    msg = exc.message if isinstance(exc, ConfigError) else str(exc)
    assert r.json() == {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


def test_every_mapped_error_has_a_case():
    tested = {type(e) for e, *_ in PLAIN + FIELD}
    assert set(STATUS) <= tested, f"add a case for {set(STATUS) - tested}"


def test_other_exceptions_are_not_turned_into_domain_answers(api):
    api.app.dependency_overrides[deps.get_service] = lambda: Raising(RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):  # TestClient re-raises what the app did not handle
        api.client.post("/jobs/j1/cancel")
