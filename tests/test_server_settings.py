"""The server's settings: job limits (artifact size, retention, worker restarts, worker niceness) live in
`Settings` with the rest, are read from AMC_* variables and `amc serve` flags (the flag wins), and a
wrong value is refused with a message that names the flag or the variable it came from."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest
from test_server_harness import REPO, free_port

from server.core.config import Settings
from server.jobs import JobService
from server.serve_cli import SettingsError, register, settings_from_args
from server.store import JobState, Store


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="amc")
    register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("AMC_KEEP_DAYS", "AMC_MAX_JOB_MB", "AMC_MAX_WORKER_RESTARTS", "AMC_WORKER_NICE", "AMC_API_TOKEN",
                 "AMC_PORT", "AMC_MAX_QUEUED_JOBS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AMC_DATA_DIR", str(tmp_path / "data"))


def test_job_limits_have_their_defaults_in_settings():
    s = Settings()
    assert (s.keep_days, s.max_job_mb, s.max_worker_restarts, s.worker_nice) == (None, 10_240.0, 2, 10)
    assert s.max_queued_jobs == 10_000
    assert s.max_job_bytes == 10_240 * 2**20


def test_flags_set_the_job_limits_and_override_the_environment(monkeypatch):
    monkeypatch.setenv("AMC_KEEP_DAYS", "30")
    monkeypatch.setenv("AMC_WORKER_NICE", "5")
    from_env = settings_from_args(parse())
    assert from_env.keep_days == 30 and from_env.worker_nice == 5

    s = settings_from_args(parse("--keep-days", "7", "--max-job-mb", "1.5", "--max-worker-restarts", "0",
                                 "--worker-nice", "19", "--max-queued-jobs", "3"))
    assert (s.keep_days, s.max_job_mb, s.max_worker_restarts, s.worker_nice) == (7, 1.5, 0, 19)
    assert s.max_queued_jobs == 3
    assert s.max_job_bytes == int(1.5 * 2**20)


def test_the_job_service_takes_its_limits_from_the_settings(tmp_path):
    s = settings_from_args(parse("--keep-days", "7", "--data-dir", str(tmp_path / "d")))
    s.prepare_dirs()
    store = Store(s.db_url)
    try:
        old = store.create_job(spec={}, config={"episodes": 1})
        store.claim_next()
        store.finish(old.id, JobState.FAILED, error="x")
        service = JobService(store=store, settings=s)
        assert service.purge_expired() == []  # finished just now
        assert service.purge_expired(now=time.time() + 8 * 86400) == [old.id]  # 8 days on: past --keep-days 7
    finally:
        store.close()


@pytest.mark.parametrize(
    ("argv", "named", "hint"),
    [
        (("--worker-nice", "25"), "--worker-nice 25", "less than or equal to 19"),
        (("--worker-nice", "-1"), "--worker-nice -1", "greater than or equal to 0"),
        (("--keep-days", "0"), "--keep-days 0", "greater than 0"),
        (("--max-job-mb", "-5"), "--max-job-mb -5", "greater than 0"),
        (("--max-worker-restarts", "101"), "--max-worker-restarts 101", "less than or equal to 100"),
        (("--max-queued-jobs", "0"), "--max-queued-jobs 0", "greater than or equal to 1"),
        (("--port", "70000"), "--port 70000", "less than or equal to 65535"),
    ],
)
def test_a_wrong_flag_is_refused_naming_the_flag(argv, named, hint):
    with pytest.raises(SettingsError) as err:
        settings_from_args(parse(*argv))
    assert str(err.value).startswith(named + ": ") and hint in str(err.value)


def test_a_wrong_variable_is_refused_naming_the_variable_and_a_flag_can_correct_it(monkeypatch):
    monkeypatch.setenv("AMC_MAX_WORKER_RESTARTS", "-3")
    with pytest.raises(SettingsError, match=r"^AMC_MAX_WORKER_RESTARTS=-3: .*greater than or equal to 0"):
        settings_from_args(parse())
    assert settings_from_args(parse("--max-worker-restarts", "1")).max_worker_restarts == 1


def test_a_secret_setting_is_not_echoed_in_its_error(monkeypatch):
    monkeypatch.setenv("AMC_API_TOKEN", "short-secret")
    with pytest.raises(SettingsError) as err:
        settings_from_args(parse())
    assert "short-secret" not in str(err.value)
    assert str(err.value).startswith("AMC_API_TOKEN must be at least 16 characters")


def test_amc_serve_exits_2_naming_the_wrong_flag(tmp_path):
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()), "--data-dir",
                           str(tmp_path / "data"), "--worker-nice", "40"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "--worker-nice 40" in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created
    bad_type = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--keep-days", "a week"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad_type.returncode == 2 and "--keep-days" in bad_type.stderr
