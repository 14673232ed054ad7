"""SQLite cache of measurements, keyed by (device identity, runtime, threads, CPU mask, model sha256), so
the same candidate is never timed twice on the same kind of device (`DeviceIdentity.key`: model, build,
runtimes, agent; not the address, not the serial). WAL mode: several workers may read and write at once."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from profiler.errors import ProfilerError
from profiler.protocol import MeasureConfig, Measurement

log = logging.getLogger(__name__)

# 2: rows keyed by device identity. Files of version 0 (no version) keyed rows by the address a device
# was reached at (`local:HOST`, `adb:...`), which another phone may answer at later.
CACHE_VERSION = 2
_ADDRESS_KEYED = "device_id LIKE 'local:%' OR device_id LIKE 'adb:%' OR device_id = 'local'"

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
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > CACHE_VERSION:
                raise ProfilerError(f"{self.path} is a measurement cache of version {version}, newer than this "
                                    f"program's {CACHE_VERSION}; upgrade amc, or move the file away to start a "
                                    "new cache")
            if version < CACHE_VERSION:
                dropped = conn.execute(f"DELETE FROM measurements WHERE {_ADDRESS_KEYED}").rowcount
                conn.execute(f"PRAGMA user_version = {CACHE_VERSION}")
                if dropped:
                    log.warning("dropped %d cached measurements of %s keyed by device address (from before "
                                "devices were keyed by what they are): they could be another phone's; those "
                                "models are measured again when asked", dropped, self.path)

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
