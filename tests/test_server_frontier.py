"""A frontier job end to end, against a real uvicorn process and worker: demo-cnn on digits, two targets,
three episodes each, one recovery epoch, the unpruned network's own weights uploaded as a reference.
frontier.json, the plot and each target's files come back through the API; episodes are numbered
job-wide and say their target; recovery epochs are recorded per target."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from test_server_harness import SMALL_JOB, ServerProcess, wait_for

TARGETS = ["flops=0.6", "flops=0.3"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("amc") / "data").start()
    yield srv
    srv.stop()


def test_a_frontier_job_serves_its_frontier_and_each_targets_files(server):
    import onnxruntime as ort

    from compressor.training import train_demo_cnn

    weights = train_demo_cnn()  # the weights the job's demo-cnn uses too (cached)
    spec = {**{k: v for k, v in SMALL_JOB.items() if k != "target"}, "targets": TARGETS, "episodes": 3,
            "finetune_epochs": 1}
    with server.client() as c:
        up = c.post("/uploads", files={"file": ("demo-cnn.pt", weights.read_bytes())}).json()
        r = c.post("/jobs", json={**spec, "references": [f"demo-cnn={up['id']}"]})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert job["state"] == "succeeded", (job.get("error"), c.get(job["links"]["log"]).text[-3000:])
        assert job["episodes_done"] == job["episodes_total"] == 6 and job["progress"] == 1.0

        frontier = job["report"]
        assert [p["target"] for p in frontier["points"]] == TARGETS
        unpruned = frontier["unpruned"]
        for p in frontier["points"]:
            assert p["budget_met"] and p["macs"] <= float(p["target"].split("=")[1]) * unpruned["macs"]
            assert p["accuracy_before_recovery"] is not None and p["latency_measured_ms"] > 0  # timed on `local`
        [ref] = frontier["references"]
        assert ref["name"] == "demo-cnn" and ref["accuracy"] == pytest.approx(unpruned["accuracy"])
        assert ref["latency_measured_ms"] > 0 and up["id"] in ref["source"]

        eps = c.get(f"/jobs/{job_id}/episodes").json()["episodes"]
        assert [e["episode"] for e in eps] == list(range(1, 7))
        assert [(e["record"]["target"], e["record"]["episode"]) for e in eps] == [
            (t, n) for t in TARGETS for n in (1, 2, 3)]
        assert [(r["target"], r["epoch"], r["epochs"]) for r in job["recovery"]] == [(t, 1, 1) for t in TARGETS]

        links = job["links"]["artifacts"]
        assert {"frontier.json", "frontier.svg", "report.md"} <= set(links)
        assert c.get(links["frontier.json"]).json() == frontier
        svg = ET.fromstring(c.get(links["frontier.svg"]).text)
        assert len([e for e in svg.iter() if e.tag.endswith("circle")]) == len(TARGETS)
        top = c.get(links["report.md"]).text
        assert "flops-0.6/report.md" in top
        # No farm: the frontier's own by-phone-model table is a note naming the job's device.
        section = frontier["latency_per_phone_model"]
        assert section["farm"] is None and section["rows"] == [] and "local" in section["note"]
        assert top.index("## Latency on every phone model") > top.index("flops-0.6/report.md")
        for p in frontier["points"]:
            report = c.get(f"/jobs/{job_id}/artifacts/{p['dir']}/report.json")
            assert report.status_code == 200 and report.json()["target"] == p["target"]
            assert report.json()["result"]["macs"] == p["macs"]
            # No farm here: each target's per-phone-model section says the job's device is the only one.
            section = report.json()["latency_per_phone_model"]
            assert section["farm"] is None and section["models"] == [] and "local" in section["note"]
            md = c.get(f"/jobs/{job_id}/artifacts/{p['dir']}/report.md").text
            assert "## Latency on every phone model" in md
            assert f"{p['dir']}/model.onnx" in links and f"{p['dir']}/episodes.csv" in links
        model = c.get(f"/jobs/{job_id}/artifacts/flops-0.3/model.onnx")
        sess = ort.InferenceSession(model.content, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        out = sess.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})[0]
        assert out.shape[-1] == 10 and np.isfinite(out).all()
        assert c.get(f"/jobs/{job_id}/artifacts/flops-0.3/../../../api-token").status_code == 404
        assert c.get("/jobs").json()["jobs"][0]["target"] == ", ".join(TARGETS)
