"""Uploads in this process: weights are loaded with weights_only (pickles refused), unknown file types
are refused naming what is accepted, and the size limit holds with or without a Content-Length."""

from __future__ import annotations

import io
import os

import pytest
from test_server_harness import in_process_app


@pytest.fixture
def api(tmp_path):
    with in_process_app(tmp_path / "data") as app:
        yield app


def test_uploads_load_weights_only_and_refuse_pickles(api):
    import torch

    buf = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(2, 2)}, buf)
    evil = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(1), "x": os.system}, evil)  # needs unpickling of a function
    c = api.client
    r = c.post("/uploads", files={"file": ("w.pt", buf.getvalue())})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["kind"] == "weights" and len(up["sha256"]) == 64 and up["size"] == len(buf.getvalue())
    assert api.store.get_upload(up["id"]).kind == "weights"
    r = c.post("/uploads", files={"file": ("evil.pt", evil.getvalue())})
    assert r.status_code == 422 and "weights_only" in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "file"]
    r = c.post("/uploads", files={"file": ("model.exe", b"MZ")})
    assert r.status_code == 422 and ".onnx" in r.text
    r = c.post("/uploads", files={"file": ("empty.onnx", b"")})
    assert r.status_code == 422 and "empty" in r.text
    assert len(list(api.settings.uploads_dir.iterdir())) == 1  # only the accepted file is kept


def test_uploads_are_size_limited(tmp_path):
    with in_process_app(tmp_path / "data", max_upload_mb=0.01) as api:  # 10 kB
        r = api.client.post("/uploads", files={"file": ("big.onnx", b"\0" * 200_000)})
        assert r.status_code == 413 and "AMC_MAX_UPLOAD_MB" in r.text
        assert not list(api.settings.uploads_dir.iterdir())  # nothing kept


def test_the_size_limit_holds_without_a_content_length(tmp_path):
    boundary = "amc-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.onnx\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * 200_000 \
        + f"\r\n--{boundary}--\r\n".encode()

    def chunked():  # a generator body is sent without Content-Length
        for i in range(0, len(body), 16_384):
            yield body[i:i + 16_384]

    with in_process_app(tmp_path / "data", max_upload_mb=0.01) as api:
        r = api.client.post("/uploads", content=chunked(),
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert r.status_code == 413 and "AMC_MAX_UPLOAD_MB" in r.json()["detail"]
        assert not list(api.settings.uploads_dir.iterdir())
