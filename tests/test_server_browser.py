"""The status page in a real browser (Debian chromium through Playwright): it asks for the API token
and keeps it for the tab, the job list shows the job's progress, the job page draws its four charts as
non-empty SVG and downloads artifacts with the token, a frontier job's page shows its plot, its table
and the recovery of each target, and screenshots are taken."""

from __future__ import annotations

import shutil
from urllib.parse import urlparse

import pytest
from test_server_harness import SMALL_JOB, TOKEN, ServerProcess, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def sign_in(page, url: str) -> None:
    """Open the page; it asks for the token (nothing of the API is shown before), which it then keeps."""
    page.goto(url)
    page.locator("#login").wait_for(timeout=15_000)
    assert page.locator("#list-view").is_hidden() and page.locator("#job-view").is_hidden()
    page.fill("#token-input", TOKEN)
    page.click("#login button")
    page.locator("#login").wait_for(state="hidden", timeout=15_000)


def test_a_wrong_token_is_asked_for_again(browser, tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("#token-input", "wrong-token-0123456789")
        page.click("#login button")
        page.locator("#login-message", has_text="refused").wait_for(timeout=15_000)
        assert page.evaluate("sessionStorage.getItem('amc-api-token')") is None
        assert page.locator("#jobs tbody tr").count() == 0
        page.fill("#token-input", TOKEN)
        page.click("#login button")
        page.locator("#devices td", has_text="local").first.wait_for(timeout=15_000)
        page.goto(server.url + "/")  # kept for the tab: not asked again
        page.locator("#devices td", has_text="local").first.wait_for(timeout=15_000)
        assert page.locator("#login").is_hidden()
    finally:
        server.stop()


def test_status_page_shows_progress_and_charts(browser, tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as c:
            # A latency reward on `local`: the job completes the CPU's lookup table, searches, then
            # measures its best candidates, so every chart has something to draw.
            r = c.post("/jobs", json={**SMALL_JOB, "episodes": 5, "reward": "latency"})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            sign_in(page, server.url + "/")
            row = page.locator(f"#jobs tr[data-id='{job_id}']")
            row.wait_for(timeout=15_000)
            assert "demo-cnn" in row.inner_text()
            page.locator("#devices td", has_text="local").first.wait_for(timeout=15_000)
            page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)

            row.locator("a").click()
            page.wait_for_url(f"**/ui/jobs/{job_id}")
            # Live updates: the page follows the running job to the end without a reload.
            page.locator("#job-state.succeeded").wait_for(timeout=150_000)
            page.wait_for_function("document.querySelectorAll('#chart-reward circle.point').length >= 5",
                                   timeout=15_000)
            assert "5 / 5 episodes" in page.inner_text("#job-progress")
            for chart in ("reward", "pareto", "ratios"):
                n = page.locator(f"#chart-{chart} > *").count()
                assert n > 5, f"chart {chart} is empty"
            measured = c.get(f"/jobs/{job_id}").json()["report"]["latency"]["candidates"]
            assert page.locator("#chart-latency circle.point").count() == len(measured) >= 1
            assert page.locator("#chart-latency line.diagonal").count() == 1
            assert "ms measured" in page.inner_text("#job-result")
            assert page.locator("#chart-pareto circle.pareto-point").count() >= 1
            assert page.locator("#chart-ratios rect.vbar").count() == len(c.get(f"/jobs/{job_id}").json()["best"]["ratios"])
            assert page.locator("#job-artifacts a", has_text="model.onnx").count() == 1
            with page.expect_download() as download:  # fetched with the token, handed over as a file
                page.locator("#job-artifacts a", has_text="model.onnx").click()
            assert download.value.suggested_filename == "model.onnx"
            saved = tmp_path / "downloaded.onnx"
            download.value.save_as(saved)
            assert saved.read_bytes() == c.get(f"/jobs/{job_id}/artifacts/model.onnx").content
            assert page.locator("#job-frontier").is_hidden() and page.locator("#job-recovery").is_hidden()
            shot = tmp_path / "job.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
            wait_for(c, job_id, {"succeeded"})
    finally:
        server.stop()


def test_a_frontier_jobs_page_shows_its_plot_table_and_recovery(browser, tmp_path):
    from compressor.training import train_demo_cnn

    targets = ["flops=0.6", "flops=0.3"]
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as c:
            up = c.post("/uploads", files={"file": ("demo-cnn.pt", train_demo_cnn().read_bytes())}).json()
            spec = {**{k: v for k, v in SMALL_JOB.items() if k != "target"}, "targets": targets, "episodes": 3,
                    "finetune_epochs": 1, "quantize": "int8", "qat_epochs": 1, "references": [f"demo-cnn={up['id']}"]}
            r = c.post("/jobs", json=spec)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            sign_in(page, server.url + "/")
            row = page.locator(f"#jobs tr[data-id='{job_id}']")
            row.wait_for(timeout=15_000)
            assert "flops=0.6, flops=0.3" in row.inner_text()

            page.goto(f"{server.url}/ui/jobs/{job_id}")
            page.locator("#job-frontier").wait_for(timeout=15_000)  # shown while the searches run
            page.locator("#job-state.succeeded").wait_for(timeout=180_000)
            page.wait_for_function("document.querySelector('#frontier-plot').naturalWidth > 0", timeout=15_000)
            assert page.locator("#frontier-table tr.point").count() == len(targets)
            assert page.locator("#frontier-table tr.reference").count() == 1
            assert "(unpruned)" in page.inner_text("#frontier-table tr.unpruned")
            link = page.locator("#frontier-table tr.point a", has_text="flops=0.6")
            assert link.get_attribute("href") == f"/jobs/{job_id}/artifacts/flops-0.6/report.md"
            recovery = page.locator("#job-recovery .recovery")
            assert recovery.count() == len(targets)
            for i, target in enumerate(targets):
                assert target in recovery.nth(i).inner_text() and "epoch 1 / 1" in recovery.nth(i).inner_text()
            qat = page.locator("#job-recovery .recovery-qat")  # the int8 bar under each recovery's
            assert qat.count() == len(targets)
            assert all("quantization-aware epoch 1 / 1" in qat.nth(i).inner_text() for i in range(len(targets)))
            assert "6 / 6 episodes" in page.inner_text("#job-progress")
            assert page.locator("#job-artifacts a", has_text="flops-0.3/model.onnx").count() == 1
            # No farm here: the frontier's by-phone-model table is a note.
            assert "no phone farm" in page.inner_text("#frontier-phone-models-note")
            # With a farm (its section put into the server's real answer): a row per model, a column per phone model.
            def with_farm(route) -> None:
                answer = route.fetch()
                job = answer.json()
                missing = {"model:Galaxy_S22": "no phone of this model measured"}
                rows = [{"name": "demo-cnn", "kind": "unpruned", "ms": {"model:Pixel_7": 2.0, "model:Galaxy_S22": 3.0},
                         "errors": {}},
                        *({"name": p["target"], "kind": "point", "target": p["target"], "dir": p["dir"],
                           "ms": {"model:Pixel_7": 1.0, "model:Galaxy_S22": None}, "errors": missing}
                          for p in job["report"]["points"]),
                        {"name": "demo-cnn", "kind": "reference", "ms": {"model:Pixel_7": 2.0, "model:Galaxy_S22": 3.1},
                         "errors": {}}]
                job["report"]["latency_per_phone_model"] = {
                    "farm": "ray://farm:10001", "device": "local", "note": "timed", "rows": rows,
                    "models": [{"model": "Galaxy S22", "device": "model:Galaxy_S22", "phones": 1},
                               {"model": "Pixel 7", "device": "model:Pixel_7", "phones": 2}]}
                route.fulfill(response=answer, json=job)

            page.route(lambda url: urlparse(url).path == f"/jobs/{job_id}", with_farm)
            page.reload()
            table = page.locator("#frontier-phone-models-table")
            table.wait_for(timeout=15_000)
            assert table.locator("thead th").all_inner_texts() == ["model", "Galaxy S22 (1)", "Pixel 7 (2)"]
            assert table.locator("tr.point").count() == len(targets)
            assert table.locator("tr.unpruned td").all_inner_texts() == ["demo-cnn (unpruned)", "3.000", "2.000"]
            assert table.locator("tr.reference td").all_inner_texts() == ["demo-cnn (reference)", "3.100", "2.000"]
            point = table.locator("tr.point", has_text="flops=0.3")
            assert point.locator("td").all_inner_texts() == ["flops=0.3", "—", "1.000"]
            assert point.locator("a").get_attribute("href") == f"/jobs/{job_id}/artifacts/flops-0.3/report.md"
            assert point.locator("td").nth(1).get_attribute("title") == "no phone of this model measured"
            assert page.locator("#job-result #phone-models, #job-result #phone-models-note").count() == 0  # not twice
            shot = tmp_path / "frontier.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
    finally:
        server.stop()
