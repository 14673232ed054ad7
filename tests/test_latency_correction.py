"""Latency targets close the loop with the device: when the table's predictions are off, the budget is
rescaled by what the measured candidates say and the search goes on, so the result uses its budget
as measured instead of the half the table thought it was using."""

from __future__ import annotations

import csv

import pytest

from compressor.config import SearchConfig
from compressor.errors import ConfigError
from compressor.search import run_search
from compressor.training import train_demo_cnn
from compressor.zoo import load_model


class _BiasedTable:
    """A device whose latency is the parameter count in thousands, behind a table that predicts
    twice that (weights of convs and linears, ×2): the way a table calibrated on a faster day, or
    blind to an overhead the runtime fuses away, over-predicts."""

    name = "biased"

    def __init__(self):
        self.measured = 0

    def predict_ms(self, kernels):
        return 2 * sum(k.cin * k.cout * k.k * k.k for k in kernels if k.op in ("conv", "linear")) / 1000

    def measure_ms(self, model, example_input, *, fresh=False):
        self.measured += 1
        return sum(p.numel() for p in model.parameters()) / 1000


@pytest.fixture(scope="module")
def demo_weights_path(tmp_path_factory):
    return train_demo_cnn(tmp_path_factory.mktemp("cache"))


def _search(tmp_path, weights, rounds, *, calibrate=False):
    oracle = _BiasedTable()
    full = _BiasedTable().measure_ms(load_model("demo-cnn").model, None)
    target = round(0.6 * full, 3)
    config = SearchConfig(model="demo-cnn", data="digits", episodes=9, strategy="random", weights=str(weights),
                          target=f"latency-ms={target}", latency_rounds=rounds, seed=1, calibrate_latency=calibrate)
    return run_search(config, tmp_path / f"r{rounds}{'c' if calibrate else ''}", oracle=oracle), target


def test_timing_the_unpruned_network_first_calibrates_the_table(tmp_path, demo_weights_path):
    """The same biased table, calibrated before the search by one measurement of the unpruned network:
    the search uses its budget as measured without any correction round."""
    plain, target = _search(tmp_path, demo_weights_path, 0)
    calibrated, _ = _search(tmp_path, demo_weights_path, 0, calibrate=True)
    calibration = calibrated["latency"]["calibration"]
    assert calibration["ratio"] == pytest.approx(calibration["measured_ms"] / calibration["predicted_ms"])
    assert 0.4 < calibration["ratio"] < 0.7  # the table predicts about twice what the device measures
    assert "corrections" not in calibrated["latency"]
    assert calibrated["budget"]["limit"] == pytest.approx(target)
    assert calibrated["budget"]["predicted_limit"] == pytest.approx(target / calibration["ratio"])
    assert calibrated["budget"]["met"] and calibrated["result"]["latency_measured_ms"] <= target
    assert calibrated["result"]["latency_measured_ms"] > 0.8 * target > plain["result"]["latency_measured_ms"]


def test_a_table_that_over_predicts_is_corrected_by_measurements(tmp_path, demo_weights_path):
    plain, target = _search(tmp_path, demo_weights_path, 0)
    corrected, _ = _search(tmp_path, demo_weights_path, 2)
    # Without correction the table's factor of two leaves about half the budget unused.
    assert plain["result"]["latency_measured_ms"] < 0.65 * target
    assert "corrections" not in plain["latency"]
    rounds = corrected["latency"]["corrections"]
    assert 1 <= len(rounds) <= 2
    assert rounds[0]["ratio"] == pytest.approx(0.5, rel=0.15)  # measured / predicted
    assert rounds[0]["limit_ms"] == pytest.approx(target / rounds[0]["ratio"])
    # A round records its pick's raw measurement and the drift-corrected one it held against the target.
    assert rounds[-1]["measured_ms"] == corrected["latency"]["measured_ms"]
    assert rounds[-1]["comparable_ms"] == corrected["latency"]["comparable_ms"]
    # The correction round searched the budget the measurements said was free: candidates predicted
    # past the target (up to the rescaled limit), so measured up to about the target itself.
    with open(tmp_path / "r2" / "episodes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == corrected["episodes"] > plain["episodes"]
    later = [float(r["latency_ms"]) for r in rows[plain["episodes"]:]]
    assert max(later) > 1.5 * target and all(ms <= rounds[-1]["limit_ms"] * (1 + 1e-9) for ms in later)
    # The pick is met as measured, and no less rewarding than the uncorrected search's pick (whose
    # episodes the corrected search also played).
    assert corrected["result"]["latency_measured_ms"] <= target
    assert corrected["budget"]["met"] and corrected["budget"]["limit"] == pytest.approx(target)
    best = {int(r["episode"]): float(r["reward"]) for r in rows}
    assert best[corrected["best_episode"]] >= best[plain["best_episode"]]


def test_latency_rounds_are_bounded():
    with pytest.raises(ConfigError, match="latency_rounds"):
        SearchConfig(model="demo-cnn", data="digits", latency_rounds=11)


class _SlowerToday(_BiasedTable):
    """The same device, a third slower than when the search started (thermal throttling)."""

    def measure_ms(self, model, example_input, *, fresh=False):
        return 1.5 * super().measure_ms(model, example_input, fresh=fresh)


def test_a_resumed_search_keeps_the_calibration_it_ran_under(tmp_path, demo_weights_path):
    from compressor.errors import SearchCancelled

    full = _BiasedTable().measure_ms(load_model("demo-cnn").model, None)
    config = SearchConfig(model="demo-cnn", data="digits", episodes=9, strategy="random",
                          weights=str(demo_weights_path), target=f"latency-ms={round(0.6 * full, 3)}",
                          latency_rounds=0, seed=1)
    whole = run_search(config, tmp_path / "whole", oracle=_BiasedTable())
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(SearchCancelled):
        run_search(config, tmp_path / "split", oracle=_BiasedTable(), should_stop=stop_after_four)
    # Resumed on a device that now measures slower: the remaining episodes keep the budget the first
    # ones ran under, so they play what the uninterrupted search played (the final pick is measured
    # on today's device, so it may differ).
    resumed = run_search(config, tmp_path / "split", oracle=_SlowerToday(), resume=True)
    assert resumed["latency"]["calibration"] == whole["latency"]["calibration"]
    assert resumed["budget"]["predicted_limit"] == pytest.approx(whole["budget"]["predicted_limit"])
    # The final pick is measured beside the unpruned network, which now runs 1.5x slower than at the
    # calibration: the drift is seen and divided out, so the same candidate meets the same target.
    assert resumed["latency"]["drift"] == pytest.approx(1.5)
    assert whole["latency"]["drift"] == pytest.approx(1.0)
    assert resumed["result"]["channels"] == whole["result"]["channels"]
    assert resumed["latency"]["measured_ms"] == pytest.approx(1.5 * whole["latency"]["measured_ms"])
    assert resumed["latency"]["comparable_ms"] == pytest.approx(whole["latency"]["measured_ms"])
    assert resumed["budget"]["met"] and whole["budget"]["met"]

    def played(out) -> list[str]:
        with open(out / "episodes.csv") as fh:
            return [r["kept"] for r in csv.DictReader(fh)]

    assert played(tmp_path / "split") == played(tmp_path / "whole") and len(played(tmp_path / "whole")) == 9


def test_a_refused_latency_target_is_named_in_the_devices_milliseconds(tmp_path, demo_weights_path):
    """With a calibrated table the budget is held in the table's milliseconds; the refusal still names
    what the user can ask for in the device's, and asking for it works."""
    from compressor.errors import BudgetInfeasible

    def search(target: float, out: str) -> dict:
        config = SearchConfig(model="demo-cnn", data="digits", episodes=2, strategy="random",
                              weights=str(demo_weights_path), target=f"latency-ms={target}", latency_rounds=0, seed=1)
        return run_search(config, tmp_path / out, oracle=_BiasedTable())

    with pytest.raises(BudgetInfeasible, match=r"latency-ms=0\.001 cannot be reached") as refused:
        search(0.001, "refused")
    # The table predicts about twice what the device measures: the smallest reachable target, in the
    # device's milliseconds, is about half the table's smallest prediction, and it can be asked for.
    report = search(round(refused.value.smallest * 1.01, 5), "asked")
    ratio = report["latency"]["calibration"]["ratio"]
    assert ratio < 0.7
    assert report["budget"]["limit"] == pytest.approx(round(refused.value.smallest * 1.01, 5))
    assert report["budget"]["predicted_limit"] == pytest.approx(report["budget"]["limit"] / ratio)


class _OffsetTable(_BiasedTable):
    """A table whose error depends on the size: each prediction carries a fixed cost (half the unpruned
    network's) that the device does not pay, as a runtime that fuses a per-kernel overhead away in a whole
    network. One measured/predicted ratio read at one size is wrong at every other."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def predict_ms(self, kernels):
        return super().predict_ms(kernels) / 2 + self.offset


def test_a_table_whose_error_depends_on_the_size_is_corrected_between_two_measurements(tmp_path, demo_weights_path):
    full = _BiasedTable().measure_ms(load_model("demo-cnn").model, None)
    target, offset = round(0.6 * full, 3), full / 2
    config = SearchConfig(model="demo-cnn", data="digits", episodes=9, strategy="random",
                          weights=str(demo_weights_path), target=f"latency-ms={target}", latency_rounds=2, seed=1,
                          calibrate_latency=False)
    report = run_search(config, tmp_path / "offset", oracle=_OffsetTable(offset))
    rounds = report["latency"]["corrections"]
    # The first round has only candidates below the target (the offset makes them look dearer): a ratio,
    # whose candidates overshoot. The second reads the budget off the line between the two sides: where the
    # device's target lies as predicted (target + offset), not where a ratio read at the overshoot's size
    # would put it (about twice as far).
    assert rounds[0]["how"] == "ratio"
    assert len(rounds) == 2 and rounds[1]["how"] == "interpolated"
    assert rounds[1]["limit_ms"] == pytest.approx(target + offset, rel=0.05)
    assert target / rounds[1]["ratio"] > 1.5 * (target + offset)
    with open(tmp_path / "offset" / "episodes.csv") as fh:
        later = [float(r["latency_ms"]) for r in list(csv.DictReader(fh))[-rounds[1]["episodes"]:]]
    assert all(ms <= rounds[1]["limit_ms"] * (1 + 1e-9) for ms in later)
    assert report["budget"]["met"] and report["result"]["latency_measured_ms"] <= target
    assert "Latency correction 2: the candidates measured either side of the target" in (
        tmp_path / "offset" / "report.md").read_text()
