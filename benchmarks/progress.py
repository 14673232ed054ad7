"""Progress lines on stderr for the benchmarks that run searches (stdout carries the markdown)."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def search_progress(event, *, phases: bool = True, every: int = 10) -> None:
    """A search's events as lines: its phases, every `every`-th episode (and the last), each recovery epoch."""
    if event.kind == "phase" and phases:
        log(f"  {event.phase}: {event.message}")
    elif event.kind == "episode" and (event.episode % every == 0 or event.episode == event.episodes):
        r = event.record
        lat = f" {r['latency_ms']:.3f} ms" if r.get("latency_ms") else ""
        log(f"  [{event.phase}] episode {event.episode}/{event.episodes} acc {r['accuracy']:.4f} "
            f"best {r['best_accuracy']:.4f} MACs {r['macs_ratio']:.3f}{lat} ({r['seconds']:.1f} s)")
    elif event.kind == "epoch":
        r = event.record
        held = r.get("holdout_accuracy")
        log(f"  [{event.phase}] epoch {event.episode}/{event.episodes} loss {r['loss']:.4f}"
            + (f" held-out {held:.4f}" if held is not None else "") + f" ({r['seconds']:.0f} s)")
