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
    return _add(out_dir / "report.json", report, section, markdown(section))


def _add(json_path: Path, document: dict[str, Any], section: dict[str, Any], md_text: str) -> dict[str, Any]:
    """`document` with the section under KEY, written to `json_path`; `md_text` appended to the report.md beside it."""
    document = {**document, KEY: section}
    atomic_write(json_path, json.dumps(document, indent=2, default=str).encode())
    md = json_path.parent / "report.md"
    text = md.read_text() if md.is_file() else ""
    atomic_write(md, (text.rstrip("\n") + "\n\n" + md_text).encode())
    return document


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


# ------------------------------------------------------------------------------------------ a frontier
def frontier_latencies(frontier: dict[str, Any], sections: dict[str, dict[str, Any]], *, device: str,
                       farm: str | None, references: list[tuple[str, Path]],
                       deadline_s: float = 300.0) -> dict[str, Any]:
    """A frontier's section: the unpruned network, each target's pruned model and each reference a user
    could pick instead, on every phone model of the farm, so the choice can be made per phone model.
    {farm, device, note, models: [{model, device, phones}], rows: [{name, kind (unpruned, point,
    reference), target, dir, ms: {device: median_ms or None}, errors: {device: why}}]}. The targets' and
    the unpruned network's numbers come from the targets' own sections (`sections`, by target folder;
    timed already); `references`
    ((name, ONNX file) pairs) are timed here. Without a farm, `models` and `rows` are empty."""
    if farm is None:
        return {"farm": None, "device": device, "models": [], "rows": [],
                "note": f"no phone farm (AMC_RAY_ADDRESS is not set): the job's own device {device} is the only "
                        "one; its numbers are in the table above"}
    models: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    unpruned: dict[str, Any] = {"name": (frontier.get("unpruned") or {}).get("name") or "unpruned",
                                "kind": "unpruned", "ms": {}, "errors": {}}

    def add(row: dict[str, Any], found: list[dict[str, Any]]) -> dict[str, Any]:
        for r in found:
            models.setdefault(r["device"], {"model": r["model"], "device": r["device"], "phones": r["phones"]})
            row["ms"][r["device"]] = r.get("median_ms")
            if r.get("median_ms") is None and r.get("error"):
                row["errors"][r["device"]] = r["error"]
        return row

    for p in frontier.get("points") or []:
        found = (sections.get(str(p.get("dir"))) or {}).get("models") or []
        rows.append(add({"name": p["target"], "kind": "point", "target": p["target"], "dir": p["dir"],
                         "ms": {}, "errors": {}}, found))
        for r in found:  # every target timed the same unpruned network: the first number stands
            if unpruned["ms"].get(r["device"]) is None:
                unpruned["ms"][r["device"]] = r.get("baseline_median_ms")
    if references:
        from profiler.cache import MeasurementCache
        from profiler.farm.client import Farm, measure_each_model
        from profiler.farm.names import insecure_from_env
        from profiler.paths import default_cache_path
        from profiler.protocol import MeasureConfig

        client = Farm(farm, insecure=insecure_from_env())
        cache = MeasurementCache(default_cache_path())
        for name, path in references:
            found = measure_each_model(client, path, MeasureConfig(threads=1), deadline_s=deadline_s, cache=cache)
            rows.append(add({"name": name, "kind": "reference", "ms": {}, "errors": {}}, found))
    rows.insert(0, unpruned)
    measured = sum(v is not None for r in rows for v in r["ms"].values())
    note = (f"{len(rows)} model(s) timed on {len(models)} phone model(s) of the farm ({measured} numbers)"
            if models else "the farm serves no phones")
    return {"farm": farm, "device": device, "models": sorted(models.values(), key=lambda m: m["device"]),
            "rows": rows, "note": note}


def add_to_frontier(out_dir: Path, frontier: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """`frontier` with the section, written into frontier.json and appended to the frontier's report.md."""
    return _add(out_dir / "frontier.json", frontier, section, frontier_markdown(section))


def frontier_markdown(section: dict[str, Any]) -> str:
    lines = ["## Latency on every phone model", ""]
    if not section["models"]:
        return "\n".join([*lines, section["note"] + ".", ""])
    models = section["models"]
    lines += [f"Measured on the phone farm at `{section['farm']}` (median ms of each model's runs, one phone per "
              f"phone model); the frontier's own device was `{section['device']}`.", "",
              "| model | " + " | ".join(f"{m['model']} ({m['phones']} phone{'s' if m['phones'] != 1 else ''})"
                                        for m in models) + " |",
              "|---|" + "---:|" * len(models)]
    missing: list[str] = []
    for r in section["rows"]:
        name = {"unpruned": f"{r['name']} (unpruned)", "reference": f"{r['name']} (reference)"}.get(
            r["kind"], f"[{r['name']}]({r.get('dir')}/report.md)")
        cells = []
        for m in models:
            v = r["ms"].get(m["device"])
            cells.append("—" if v is None else f"{v:.4f}")
            if v is None and r["errors"].get(m["device"]):
                missing.append(f"{r['name']} on {m['model']}: {r['errors'][m['device']]}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "Not measured: " + "; ".join(missing) + "."]
    return "\n".join([*lines, ""])
