"""API fuzzing with schemathesis against the served /openapi.json: for inputs generated from the
schema (valid and invalid), no route answers 5xx and every answer is one the document describes
(status, content type, headers, body schema); schema-invalid requests are refused.

A short run is part of the normal suite; `-m slow` runs many more cases per route, recording how many
were sent as the `cases` property of each test (`python -m benchmarks.bench_api_fuzz` runs it and
reports them)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from test_server_harness import TOKEN, in_process_app

# The contract: what the issue asks the document to promise. positive_data_acceptance is left out on
# purpose: a job spec can be schema-valid and still refused for what only the search can judge (an
# unknown upload id, an unreachable budget), and the document says so with its 422.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance, checks.negative_data_rejection]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHORT = int(os.environ.get("AMC_FUZZ_EXAMPLES", "12"))
LONG = int(os.environ.get("AMC_FUZZ_EXAMPLES_LONG", "300"))


@pytest.fixture
def served(tmp_path_factory):
    # The app in this process with a job service that is never started: accepted jobs stay queued, so
    # fuzzing runs no searches. The schema is read from the app's own /openapi.json. A fresh server per
    # operation: one operation's inputs (say, many registered devices) never slow another's.
    # schemathesis' ASGI client names the server `testserver`: allowed as an operator would allow a name.
    with in_process_app(tmp_path_factory.mktemp("fuzz") / "data", allowed_hosts="testserver") as api:
        yield api


def without_lifespan(app):
    """The app as an ASGI callable whose lifespan starts nothing (schemathesis' client runs the lifespan,
    which would start the job workers; the in-process app hands the routes its own store and service)."""
    async def asgi(scope, receive, send):
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    return asgi


@pytest.fixture
def api_schema(served):
    return schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(served.app))


def _operations() -> list[str]:
    from server.main import create_app

    paths = create_app().openapi()["paths"]
    return [f"{method.upper()} {path}" for path, ops in paths.items() for method in ops]


OPERATIONS = _operations()
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


def _headers(case) -> dict[str, str]:
    """The case's headers with the token last (schemathesis fills the bearer scheme's header with generated
    values), except when the case is invalid *in its headers*: its missing or malformed Authorization is
    then what it tests, and sent as generated (401 is a refusal). Putting the token back would turn the case
    into a valid request and the server's 200 into a false "schema-violating request accepted" (the long run
    found it for GET /jobs and GET /devices, whose other mutation, an extra query property with an empty
    value, does not survive serialization)."""
    headers = dict(case.headers or {})
    meta = getattr(case, "meta", None)
    components = getattr(meta, "components", None) or {}
    mutated = any(str(getattr(where, "value", where)) == "header" and info.mode is schemathesis.GenerationMode.NEGATIVE
                  for where, info in components.items())
    return headers if mutated else {**headers, **AUTH}


def fuzz(schema, label: str, mode, examples: int, *, derandomize: bool, tally: dict[str, int] | None = None) -> int:
    """Run `examples` generated cases of one operation; returns how many were sent (also counted in
    `tally["sent"]` as they go, so a run that fails still says how far it got)."""
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    tally = {} if tally is None else tally
    tally["sent"] = 0

    @given(data=st.data())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=derandomize, database=None, phases=[Phase.explicit, Phase.generate, Phase.shrink])
    def run(data):
        case = data.draw(strategy)
        case.call_and_validate(headers=_headers(case), checks=CHECKS)
        tally["sent"] += 1

    try:
        run()
    except Unsatisfiable:
        # no invalid request exists for an operation without inputs (GET /healthz) or with only a bool
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise
    return tally["sent"]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_contract_short(api_schema, label, mode):
    sent = fuzz(api_schema, label, mode, SHORT, derandomize=True)
    assert sent >= 1 or mode is schemathesis.GenerationMode.NEGATIVE


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_contract_long(api_schema, label, mode, record_property):
    tally = {"sent": 0}
    try:
        sent = fuzz(api_schema, label, mode, LONG, derandomize=False, tally=tally)
    finally:
        record_property("cases", tally["sent"])  # in the JUnit XML that benchmarks.bench_api_fuzz reads
    assert sent >= 1 or mode is schemathesis.GenerationMode.NEGATIVE
