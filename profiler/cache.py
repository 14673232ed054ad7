"""SQLite cache of measurements, keyed by (device id, runtime, threads, CPU mask, model sha256), so
the same candidate is never timed twice on the same device. WAL mode: several workers may read and
write at once."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from profiler.protocol import MeasureConfig, Measurement

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    device_id TEXT NOT NULL,
    runtime TEXT NOT NULL,
    threads INTEGER NOT NULL,
    cpu_mask TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    median_ms REAL NOT NULL,
    p90_ms REAL NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (device_id, runtime, threads, cpu_mask, model_sha256)
)
"""


class MeasurementCache:
    """A measurement store. One connection per thread; safe to share between threads and processes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @staticmethod
    def _key(device_id: str, runtime: str, config: MeasureConfig, sha256: str) -> tuple:
        return (device_id, runtime, config.threads, config.cpu_mask or "", sha256)

    def get(self, *, device_id: str, runtime: str, config: MeasureConfig, sha256: str) -> Measurement | None:
        row = self._conn().execute(
            "SELECT data FROM measurements WHERE device_id=? AND runtime=? AND threads=? AND cpu_mask=? "
            "AND model_sha256=?",
            self._key(device_id, runtime, config, sha256),
        ).fetchone()
        if row is None:
            return None
        measurement = Measurement.from_dict(json.loads(row[0]))
        measurement.cached = True
        return measurement

    def put(self, measurement: Measurement, config: MeasureConfig) -> None:
        data = measurement.to_dict()
        data["cached"] = False
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?,?)",
                (*self._key(measurement.device_id, measurement.runtime, config, measurement.model_sha256),
                 measurement.median_ms, measurement.p90_ms, time.time(), json.dumps(data)),
            )

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
