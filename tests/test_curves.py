"""Best reward so far against episode: the running maximum, its mean band over seeds, the plot, and a
search's report holding the curve of its strategy and of each compared baseline."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

from compressor.config import SearchConfig
from compressor.curves import best_so_far, curves_svg, mean_band
from compressor.search import run_search


def test_best_so_far_is_the_running_maximum():
    rows = [{"reward": r} for r in (-0.5, -0.7, -0.3, float("nan"), -0.4, -0.1)]
    assert best_so_far(rows) == [-0.5, -0.5, -0.3, -0.3, -0.3, -0.1]


def test_the_band_is_mean_and_std_per_episode():
    mean, std = mean_band([[1.0, 2.0, 3.0], [3.0, 4.0]])
    assert mean == [2.0, 3.0, 3.0] and math.isclose(std[0], math.sqrt(2)) and std[2] == 0.0


def test_the_plot_is_svg_with_one_line_per_strategy():
    svg = curves_svg({"ddpg": [-0.5, -0.4, -0.2], "random": [-0.6, -0.3, -0.3]},
                     bands={"ddpg": [0.1, 0.1, 0.05]}, warmup=2)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2 and len(root.findall(f"{ns}polygon")) == 1
    assert "warm-up ends" in svg and "ddpg -0.20<" in svg
    assert "no episodes" in curves_svg({})


def test_a_search_reports_the_curves_of_its_strategy_and_the_baselines(tmp_path):
    config = SearchConfig(model="demo-cnn", data="digits", episodes=6, compare=True, reward_samples=100)
    report = run_search(config, tmp_path)
    curves = report["curves"]["best_reward_so_far"]
    assert set(curves) == {"ddpg", "uniform", "random"}
    assert len(curves["ddpg"]) == 6 and len(curves["uniform"]) == 1
    assert all(b >= a for a, b in zip(curves["ddpg"], curves["ddpg"][1:]))
    assert math.isclose(curves["ddpg"][-1], max(r["reward"] for r in _episodes(tmp_path)))
    ET.fromstring((tmp_path / "curves.svg").read_text())
    assert "Best reward so far" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["curves"]["warmup"] == config.warmup_episodes


def _episodes(folder):
    import csv

    with (folder / "episodes.csv").open() as f:
        return [{"reward": float(r["reward"])} for r in csv.DictReader(f)]
