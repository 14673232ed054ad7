"""A frontier through the REST API, in this process (no server, no worker): `targets`/`references` are
validated before the job is queued (422 naming the field), reference files come from uploads only, a
frontier job serves its files and each target's files by whitelisted names only, and the worker's event
sink numbers a frontier's episodes job-wide with their target and records recovery epochs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from test_server_harness import SMALL_JOB, in_process_app

from compressor.events import SearchEvent
from server.store import JobState, Store

BASE = {k: v for k, v in SMALL_JOB.items() if k != "target"}
FRONTIER = {**BASE, "targets": ["flops=0.6", "flops=0.3"]}


@pytest.fixture
def api(tmp_path):
    with in_process_app(tmp_path / "data") as app:
        yield app


def _upload(api, name: str, content: bytes) -> str:
    r = api.client.post("/uploads", files={"file": (name, content)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _weights(state: dict) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _onnx_bytes(shape: tuple[int, ...] = (1, 1, 8, 8)) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ref", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_a_frontier_spec_is_queued_with_one_search_per_target(api):
    from compressor.zoo import DemoCNN

    weights = _upload(api, "demo.pt", _weights(DemoCNN().state_dict()))
    onnx_id = _upload(api, "my net.onnx", _onnx_bytes())
    r = api.client.post("/jobs", json={**FRONTIER, "references": [f"demo-cnn={weights}", onnx_id]})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["episodes_total"] == 2 * SMALL_JOB["episodes"] and job["recovery"] is None
    assert job["spec"]["target"] == "flops=0.6"  # the search's config is the first target's
    assert api.store.get_job(job["id"]).config["target"] == "flops=0.6"
    [listed] = api.client.get("/jobs").json()["jobs"]
    assert listed["target"] == "flops=0.6, flops=0.3"
    # The job process gets the uploads' files, never a path from the client; an ONNX reference keeps
    # its uploaded file's name (made safe).
    from server.frontier import plan_from_spec

    plan = plan_from_spec(api.store.get_job(job["id"]).spec, store=api.store)
    assert plan.targets == ("flops=0.6", "flops=0.3")
    ref, onnx_ref = plan.references
    assert (ref.name, ref.onnx, ref.path) == ("demo-cnn", False, api.store.get_upload(weights).path)
    assert (onnx_ref.name, onnx_ref.onnx) == ("my-net", True)


def test_target_alone_still_makes_a_single_search(api):
    r = api.client.post("/jobs", json=SMALL_JOB)
    assert r.status_code == 201 and r.json()["episodes_total"] == SMALL_JOB["episodes"]
    assert "targets" not in r.json()["spec"] and "references" not in r.json()["spec"]


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"targets": ["flops=0.5", "flops=0.50"]}, "targets", "more than once"),
        ({"targets": ["flops=0.5", "FLOPS=0.5"]}, "targets", "more than once"),
        ({"targets": ["flops=0.5", "speed=2"]}, "targets", "targets[1]: 'speed=2' is not KIND=VALUE"),
        ({"targets": ["flops=1.5"]}, "targets", "more than the whole model"),
        ({"targets": ["flops=0.5", "flops=0.0001"]}, "targets", "smallest reachable target is flops="),
        ({"targets": []}, "targets", "at least 1 item"),
        ({"targets": [f"flops=0.{i}" for i in range(1, 10)]}, "targets", "at most 8 items"),
        ({"targets": ["flops=0.3"], "target": "flops=0.5"}, "targets", "give `targets` alone"),
        ({"targets": "flops=0.5"}, "targets", "valid list"),
        ({"references": ["/etc/passwd"]}, "references", "paths on the server are not accepted"),
        ({"references": ["../../api-token.onnx"]}, "references", "POST /uploads"),
        ({"references": ["resnet20=../../api-token"]}, "references", "no upload '../../api-token'"),
        ({"references": ["resnet20"]}, "references", "neither NAME=UPLOAD_ID"),
        ({"references": ["os:system=abc"]}, "references", "'os:system' is not a zoo model"),
        ({"references": ["x"] * 9}, "references", "at most 8 items"),
    ],
)
def test_a_bad_frontier_gets_422_naming_the_field(api, patch, field, hint):
    r = api.client.post("/jobs", json={**BASE, **patch})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"][:2] == ["body", field], detail
    assert hint in detail[0]["msg"], detail
    assert api.store.count_jobs() == {}


def test_an_unreachable_target_of_a_frontier_says_its_type(api):
    r = api.client.post("/jobs", json={**BASE, "targets": ["flops=0.5", "flops=0.0001"]})
    assert r.json()["detail"][0]["type"] == "BudgetInfeasible"


def test_references_must_be_uploads_of_the_right_kind_that_fit(api):
    from compressor.zoo import DemoCNN

    weights = _upload(api, "demo.pt", _weights(DemoCNN().state_dict()))
    wrong = _upload(api, "wrong.pt", _weights({"not.a.layer": __import__("torch").zeros(2)}))
    onnx_id = _upload(api, "net.onnx", _onnx_bytes())
    rgb = _upload(api, "rgb.onnx", _onnx_bytes((1, 3, 32, 32)))
    cases = {
        rgb: "the ONNX model takes 3x32x32 inputs but demo-cnn",
        f"demo-cnn={onnx_id}": "is an onnx file, not PyTorch weights",
        weights: "a reference without a zoo name is an ONNX file",
        f"demo-cnn={wrong}": "unexpected",  # weights that do not fit the model, refused at submit
        f"resnet20={weights}": "takes 3x32x32 inputs but demo-cnn",  # scored on the job's data: same input
    }
    for ref, hint in cases.items():
        r = api.client.post("/jobs", json={**FRONTIER, "references": [ref]})
        assert r.status_code == 422, (ref, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "references"] and hint in r.json()["detail"][0]["msg"], r.text
    r = api.client.post("/jobs", json={**FRONTIER, "references": [onnx_id, onnx_id]})
    assert r.status_code == 422 and "more than once" in r.text
    assert api.store.count_jobs() == {}


def test_the_openapi_document_describes_targets_and_references(api):
    props = api.app.openapi()["components"]["schemas"]["JobSpec"]["properties"]
    targets = next(b for b in props["targets"]["anyOf"] if b.get("type") == "array")
    assert (targets["minItems"], targets["maxItems"]) == (1, 8)
    assert "one search per target" in props["targets"]["description"]
    assert "POST /uploads" in props["references"]["description"]


def _succeeded_frontier(api, files: dict[str, bytes]) -> str:
    job = api.service.submit(dict(FRONTIER))
    api.store.claim_next()
    api.store.finish(job.id, JobState.SUCCEEDED, report={"points": []}, message="finished")
    folder = api.settings.jobs_dir / job.id
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return job.id


def test_a_frontier_job_serves_its_files_and_each_targets_files_only(api):
    c = api.client
    (api.settings.data_dir / "secret.json").write_text("{}")
    job_id = _succeeded_frontier(api, {
        "frontier.json": b'{"points": []}', "frontier.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "report.md": b"# Frontier", "flops-0.6/report.json": b'{"target": "flops=0.6"}',
        "flops-0.3/model.onnx": b"onnx", "flops-0.3/notes.txt": b"x", "flops-0.9/report.json": b"{}",
        "references/net.onnx": b"onnx"})
    links = c.get(f"/jobs/{job_id}").json()["links"]["artifacts"]
    assert set(links) == {"frontier.json", "frontier.svg", "report.md", "flops-0.6/report.json",
                          "flops-0.3/model.onnx"}
    assert links["flops-0.6/report.json"] == f"/jobs/{job_id}/artifacts/flops-0.6/report.json"
    r = c.get(links["flops-0.6/report.json"])
    assert r.status_code == 200 and r.json() == {"target": "flops=0.6"}
    r = c.get(links["frontier.svg"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert c.get(links["frontier.json"]).json() == {"points": []}
    for name in ("flops-0.3/notes.txt",  # not an artifact name
                 "flops-0.9/report.json",  # a folder, but not one of this job's targets
                 "references/net.onnx", "job.log", ".lock", "flops-0.6", "flops-0.6/",
                 "../secret.json", "..%2Fsecret.json", "flops-0.6/..%2F..%2Fsecret.json", "flops-0.6/../../secret.json",
                 "%2E%2E/%2E%2E/secret.json", "flops-0.6/%2e%2e/report.md", "%2Fetc%2Fpasswd", "/etc/passwd",
                 "flops-0.6/report.json/", "flops-0.6//report.json", "flops-0.6/report.json%00"):
        r = c.get(f"/jobs/{job_id}/artifacts/{name}")
        assert r.status_code == 404, (name, r.status_code, r.text[:200])


def test_a_single_job_serves_no_target_folders(api):
    job = api.service.submit(dict(SMALL_JOB))
    api.store.claim_next()
    api.store.finish(job.id, JobState.SUCCEEDED, report={}, message="finished")
    folder = api.settings.jobs_dir / job.id
    (folder / "flops-0.5").mkdir(parents=True)
    (folder / "flops-0.5" / "report.json").write_text("{}")
    (folder / "report.json").write_text("{}")
    assert list(api.client.get(f"/jobs/{job.id}").json()["links"]["artifacts"]) == ["report.json"]
    assert api.client.get(f"/jobs/{job.id}/artifacts/flops-0.5/report.json").status_code == 404


def _episode(phase: str, n: int, total: int, reward: float) -> SearchEvent:
    return SearchEvent("episode", phase, episode=n, episodes=total,
                       record={"episode": n, "reward": reward, "accuracy": 1 + reward, "macs": 10, "ratios": [0.5]})


def test_the_worker_numbers_a_frontiers_episodes_job_wide_and_records_recovery(api, monkeypatch):
    from server import worker
    from server.frontier import plan_from_spec

    job = api.service.submit(dict(FRONTIER, episodes=2, finetune_epochs=1))
    api.store.claim_next()
    plan = plan_from_spec(job.spec, store=api.store)
    events = [SearchEvent("phase", "frontier", "target 1 of 2: flops=0.6"),
              SearchEvent("phase", "search", "ddpg search, 2 episodes"),
              _episode("search flops=0.6", 1, 2, -0.2), _episode("search flops=0.6", 2, 2, -0.1),
              _episode("uniform flops=0.6", 1, 2, 0.0),  # a compare baseline's episode: not the job's
              SearchEvent("epoch", "finetune flops=0.6", episode=1, episodes=1,
                          record={"epoch": 1, "loss": 0.5, "holdout_accuracy": 0.9, "seconds": 0.1}),
              SearchEvent("phase", "frontier", "target 2 of 2: flops=0.3"),
              _episode("search flops=0.3", 1, 2, -0.3), _episode("search flops=0.3", 2, 2, -0.05)]
    seen: dict = {"messages": []}

    def fake_run_frontier(config, targets, out_dir, *, oracle, references, on_event, should_stop):
        seen.update(targets=targets, oracle=oracle, references=references)
        for ev in events:
            on_event(ev)
            seen["messages"].append(api.store.get_job(job.id).message)
        return {"points": [{"target": t} for t in targets]}

    monkeypatch.setattr("compressor.frontier.run_frontier", fake_run_frontier)
    monkeypatch.setattr(worker, "make_oracle", lambda cfg, force=False, **_: f"oracle(force={force})")
    folder = api.settings.jobs_dir / job.id
    folder.mkdir(parents=True)
    from compressor.config import SearchConfig

    report = worker.run_frontier_job(job.id, api.store, folder, SearchConfig.from_dict(job.config), plan,
                                     resume=False, should_stop=lambda: False)
    assert report["points"] == [{"target": "flops=0.6"}, {"target": "flops=0.3"}]
    assert report["latency_per_phone_model"]["farm"] is None  # no farm here: a note, no rows
    assert seen["targets"] == ("flops=0.6", "flops=0.3") and seen["oracle"] == "oracle(force=True)"
    # Phase messages say which search they are about.
    assert "flops=0.6: ddpg search, 2 episodes" in seen["messages"]
    assert "recovery flops=0.6: epoch 1 of 1, loss 0.5000, held-out accuracy 90.00%" in seen["messages"]

    out = api.client.get(f"/jobs/{job.id}").json()
    eps = api.client.get(f"/jobs/{job.id}/episodes").json()["episodes"]
    assert [(e["episode"], e["record"]["target"], e["record"]["episode"]) for e in eps] == [
        (1, "flops=0.6", 1), (2, "flops=0.6", 2), (3, "flops=0.3", 1), (4, "flops=0.3", 2)]
    assert out["episodes_done"] == out["episodes_total"] == 4 and out["progress"] == 1.0
    assert out["best"]["episode"] == 4 and out["best"]["target"] == "flops=0.3"
    assert out["recovery"] == [{"target": "flops=0.6", "epoch": 1, "loss": 0.5, "holdout_accuracy": 0.9,
                                "seconds": 0.1, "epochs": 1}]

    # After a server restart a frontier starts over: what the first run recorded is forgotten.
    def starting_over(*args, **kwargs):
        seen["before"] = api.store.episode_numbers(job.id)
        return {}

    monkeypatch.setattr("compressor.frontier.run_frontier", starting_over)
    worker.run_frontier_job(job.id, api.store, folder, SearchConfig.from_dict(job.config), plan, resume=True,
                            should_stop=lambda: False)
    assert seen["before"] == []
    after = api.store.get_job(job.id)
    assert after.best is None and after.recovery is None and after.episodes_done == 0


def test_a_single_searchs_recovery_epochs_are_recorded_without_a_target(api):
    from server.worker import recorder

    job = api.service.submit(dict(SMALL_JOB, finetune_epochs=2))
    sink = recorder(job.id, api.store)
    sink(_episode("search", 1, 4, -0.1))
    for epoch in (1, 2):
        sink(SearchEvent("epoch", "finetune", episode=epoch, episodes=2,
                         record={"epoch": epoch, "loss": 1 / epoch, "holdout_accuracy": None, "seconds": 0.2}))
    sink(SearchEvent("epoch", "finetune", episode=2, episodes=2,  # reported again after a resume: replaced
                     record={"epoch": 2, "loss": 0.25, "holdout_accuracy": None, "seconds": 0.2}))
    out = api.client.get(f"/jobs/{job.id}").json()
    assert [(r["epoch"], r["loss"]) for r in out["recovery"]] == [(1, 1.0), (2, 0.25)]
    assert all("target" not in r for r in out["recovery"]) and "target" not in out["best"]
    assert out["message"] == "recovery: epoch 2 of 2, loss 0.2500"
    assert [e["episode"] for e in api.client.get(f"/jobs/{job.id}/episodes").json()["episodes"]] == [1]


def test_quantization_aware_epochs_are_recorded_beside_recoverys_not_over_them(api):
    from server.worker import recorder

    job = api.service.submit(dict(SMALL_JOB, finetune_epochs=1, quantize="int8", qat_epochs=1))
    sink = recorder(job.id, api.store)
    sink(SearchEvent("epoch", "finetune", episode=1, episodes=1,
                     record={"epoch": 1, "loss": 0.5, "holdout_accuracy": 0.9, "seconds": 0.2}))
    sink(SearchEvent("epoch", "qat", episode=1, episodes=1,
                     record={"epoch": 1, "loss": 0.4, "holdout_accuracy": 0.91, "seconds": 0.3}))
    out = api.client.get(f"/jobs/{job.id}").json()
    assert [(r.get("stage"), r["epoch"], r["loss"]) for r in out["recovery"]] == [(None, 1, 0.5), ("qat", 1, 0.4)]
    assert out["phase"] == "qat"
    assert out["message"] == "quantization-aware recovery: epoch 1 of 1, loss 0.4000, held-out accuracy 91.00%"
    assert out["spec"]["qat_epochs"] == 1
    refused = api.client.post("/jobs", json=dict(SMALL_JOB, qat_epochs=2))  # no int8 model to prepare
    assert refused.status_code == 422 and "--quantize int8" in refused.text


def test_a_database_from_before_recovery_progress_gets_the_column(tmp_path):
    import sqlite3

    url = f"sqlite:///{tmp_path / 'amc.db'}"
    Store(url).close()
    with sqlite3.connect(tmp_path / "amc.db") as db:  # as a release before schema versions left it
        db.execute("ALTER TABLE jobs DROP COLUMN recovery")
        db.execute("DROP TABLE amc_schema")
    store = Store(url)
    try:
        job = store.create_job(spec={"model": "demo-cnn"}, config={"episodes": 1})
        store.add_epoch(job.id, {"epoch": 1, "loss": 0.5})
        assert store.get_job(job.id).recovery == [{"epoch": 1, "loss": 0.5}]
    finally:
        store.close()


def test_a_frontier_with_a_farm_tables_its_targets_and_references_by_phone_model(api, monkeypatch, tmp_path):
    """Each target's report gets its per-phone-model section, timed against one baseline export; the
    frontier's own report and frontier.json get the unpruned network, the targets and the references
    (timed here) by phone model."""
    from compressor.config import SearchConfig
    from compressor.zoo import DemoCNN
    from server import phone_models, worker
    from server.frontier import plan_from_spec

    weights = _upload(api, "demo.pt", _weights(DemoCNN().state_dict()))
    job = api.service.submit(dict(FRONTIER, episodes=2, references=[f"demo-cnn={weights}",
                                                                      _upload(api, "small.onnx", _onnx_bytes())]))
    api.store.claim_next()
    plan = plan_from_spec(job.spec, store=api.store)
    folder = api.settings.jobs_dir / job.id

    def fake_run_frontier(config, targets, out_dir, *, oracle, references, on_event, should_stop):
        points = []
        for i, t in enumerate(targets):
            (out_dir / f"t{i}").mkdir(parents=True)
            (out_dir / f"t{i}" / "model.onnx").write_bytes(b"onnx")
            (out_dir / f"t{i}" / "report.json").write_text(json.dumps({"target": t}))
            points.append({"target": t, "dir": f"t{i}"})
        (out_dir / "report.md").write_text("# Frontier\n")
        return {"unpruned": {"name": "demo-cnn"}, "points": points}

    exports: list[Path] = []
    timed: list[tuple[Path, Path | None]] = []

    def fake_baseline(cfg, where):
        exports.append(where / "baseline.onnx")
        (where / "baseline.onnx").write_bytes(b"base")
        return where / "baseline.onnx"

    def fake_latencies(out_dir, *, device, farm, baseline=None, deadline_s=300.0):
        assert baseline is not None and baseline.read_bytes() == b"base"  # still there while it is timed
        timed.append((out_dir, baseline))
        pruned = 1.0 + len(timed) / 10  # t0 1.1 ms, t1 1.2 ms
        return {"farm": farm, "device": device, "note": "timed",
                "models": [{"model": "Pixel 7", "device": "model:Pixel_7", "phones": 2, "median_ms": pruned,
                            "baseline_median_ms": 2.0},
                           {"model": "Galaxy S22", "device": "model:Galaxy_S22", "phones": 1, "median_ms": None,
                            "baseline_median_ms": 3.0, "error": "no phone of this model measured"}]}

    references: list[bytes] = []

    def fake_each_model(client, path, config, *, deadline_s, cache):
        references.append(Path(path).read_bytes())  # still there while it is timed
        ms = 0.9 * len(references)
        return [{"model": "Pixel 7", "device": "model:Pixel_7", "phones": 2, "median_ms": ms},
                {"model": "Galaxy S22", "device": "model:Galaxy_S22", "phones": 1, "median_ms": 2 * ms}]

    monkeypatch.setattr("compressor.frontier.run_frontier", fake_run_frontier)
    monkeypatch.setattr(worker, "make_oracle", lambda cfg, force=False, **_: "oracle")
    monkeypatch.setattr(worker, "baseline_onnx", fake_baseline)
    monkeypatch.setattr(phone_models, "phone_model_latencies", fake_latencies)
    monkeypatch.setattr("profiler.farm.names.farm_address", lambda: "ray://farm:10001")
    monkeypatch.setattr("profiler.farm.client.measure_each_model", fake_each_model)
    monkeypatch.setattr("profiler.farm.client.Farm", lambda address, insecure=False: address)
    frontier = worker.run_frontier_job(job.id, api.store, folder, SearchConfig.from_dict(job.config), plan,
                                       resume=False, should_stop=lambda: False)
    assert len(exports) == 1  # one export, not one per target
    assert [d.name for d, _ in timed] == ["t0", "t1"] and {b for _, b in timed} == {exports[0]}
    for i in range(2):
        report = json.loads((folder / f"t{i}" / "report.json").read_text())
        assert report["latency_per_phone_model"]["models"][0]["model"] == "Pixel 7"
    # The frontier's own table: the unpruned network, each target and the reference, by phone model.
    # The zoo reference's architecture exported here, the ONNX reference timed as uploaded.
    import onnx

    assert len(references) == 2 and references[1] == _onnx_bytes()
    assert onnx.load_from_string(references[0]).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1
    section = frontier["latency_per_phone_model"]
    assert json.loads((folder / "frontier.json").read_text()) == frontier
    assert [m["device"] for m in section["models"]] == ["model:Galaxy_S22", "model:Pixel_7"]
    assert [(r["kind"], r["name"], r["ms"]) for r in section["rows"]] == [
        ("unpruned", "demo-cnn", {"model:Pixel_7": 2.0, "model:Galaxy_S22": 3.0}),
        ("point", "flops=0.6", {"model:Pixel_7": 1.1, "model:Galaxy_S22": None}),
        ("point", "flops=0.3", {"model:Pixel_7": 1.2, "model:Galaxy_S22": None}),
        ("reference", "demo-cnn", {"model:Pixel_7": 0.9, "model:Galaxy_S22": 1.8}),
        ("reference", "small", {"model:Pixel_7": 1.8, "model:Galaxy_S22": 3.6})]
    md = (folder / "report.md").read_text()
    assert md.startswith("# Frontier\n") and "| model | Galaxy S22 (1 phone) | Pixel 7 (2 phones) |" in md
    assert "| [flops=0.3](t1/report.md) | — | 1.2000 |" in md and "| small (reference) | 3.6000 | 1.8000 |" in md
    assert "flops=0.6 on Galaxy S22: no phone of this model measured" in md
