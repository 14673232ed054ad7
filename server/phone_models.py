"""One search, latency on every phone model: after a search, its pruned model (and the unpruned one) is timed
on each phone model the phone farm serves, and the rows go into report.json (`latency_per_phone_model`),
report.md and the job's page. Without a farm the section says that the job's own device is the only one
(its numbers are the report's `latency`); nothing is estimated."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from compressor.fileio import atomic_write

log = logging.getLogger(__name__)

KEY = "latency_per_phone_model"


def phone_model_latencies(out_dir: Path, *, device: str, farm: str | None, baseline: Path | None = None,
                          deadline_s: float = 300.0) -> dict[str, Any]:
    """The section: {farm, device, note, models: [{model, device, phones, hosts, median_ms, p90_ms, ...,
    baseline_median_ms}]} with the pruned model.onnx (and the unpruned `baseline` file) timed on a free phone of
    each model of the farm at `farm`; `models` is empty without a farm."""
    if farm is None:
        return {"farm": None, "device": device, "models": [],
                "note": f"no phone farm (AMC_RAY_ADDRESS is not set): the job's own device {device} is the only "
                        "one; its numbers are in `latency`"}
    from profiler.cache import MeasurementCache
    from profiler.farm.client import Farm, measure_each_model
    from profiler.farm.names import insecure_from_env
    from profiler.paths import default_cache_path
    from profiler.protocol import MeasureConfig

    client = Farm(farm, insecure=insecure_from_env())
    cache = MeasurementCache(default_cache_path())
    config = MeasureConfig(threads=1)  # as the oracle measures candidates
    rows = measure_each_model(client, out_dir / "model.onnx", config, deadline_s=deadline_s, cache=cache)
    if baseline is not None:
        base = {r["device"]: r for r in measure_each_model(client, baseline, config, deadline_s=deadline_s,
                                                            cache=cache)}
        for r in rows:
            b = base.get(r["device"])
            r["baseline_median_ms"] = None if b is None else b["median_ms"]
    measured = sum(r["median_ms"] is not None for r in rows)
    note = (f"the pruned model timed on {measured} of {len(rows)} phone model(s) of the farm"
            if rows else "the farm serves no phones")
    return {"farm": farm, "device": device, "models": rows, "note": note}


def add_to_report(out_dir: Path, report: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """`report` with the section, written into report.json and appended to report.md."""
    report = {**report, KEY: section}
    atomic_write(out_dir / "report.json", json.dumps(report, indent=2, default=str).encode())
    md = out_dir / "report.md"
    text = md.read_text() if md.is_file() else ""
    atomic_write(md, (text.rstrip("\n") + "\n\n" + markdown(section)).encode())
    return report


def markdown(section: dict[str, Any]) -> str:
    lines = ["## Latency on every phone model", ""]
    if not section["models"]:
        return "\n".join([*lines, section["note"] + ".", ""])
    lines += [f"Measured on the phone farm at `{section['farm']}` (median of each model's runs, one phone per "
              "model); the search's own device was " f"`{section['device']}`.", "",
              "| phone model | phones | pruned median ms | pruned p90 ms | unpruned median ms | measured on |",
              "|---|---:|---:|---:|---:|---|"]

    def ms(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}"

    for r in section["models"]:
        where = r.get("measured_on") or ("cache" if r.get("cached") else "—")
        if r["median_ms"] is None:
            where = f"not measured: {r['error']}"
        lines.append(f"| {r['model']} | {r['phones']} | {ms(r['median_ms'])} | {ms(r.get('p90_ms'))} | "
                     f"{ms(r.get('baseline_median_ms'))} | {where} |")
    return "\n".join([*lines, ""])
