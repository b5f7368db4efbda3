"""The health check's rules without Docker: who is to blame for an exit, leases, the restart log."""

from __future__ import annotations

import time

import pytest

from pushtrain import health
from pushtrain.runner import contract


@pytest.mark.parametrize(
    ("exit_code", "oom", "blame"),
    [
        (contract.EXIT_KILLED, False, "host_kill"),  # docker kill, or the host
        (contract.EXIT_TERMINATED, False, "host_kill"),  # docker stop, daemon shutdown
        (255, False, "host_kill"),  # daemon restart
        (contract.EXIT_KILLED, True, "crash"),  # out of memory: the model's own doing, a small budget
        (contract.EXIT_USER_CODE_ERROR, False, "crash"),
        (1, False, "crash"),  # a runner bug: a small budget too
        (contract.EXIT_CONTRACT_ERROR, False, "fatal"),
        (contract.EXIT_DATA_ERROR, False, "fatal"),
        (contract.EXIT_USAGE, False, "fatal"),
    ],
)
def test_classify_exit(exit_code, oom, blame):
    assert health.classify_exit(exit_code, oom) == blame


def test_lease_is_fresh_only_while_heartbeats_arrive(tmp_path):
    assert not health.lease_is_fresh(tmp_path, "train")
    health.write_lease(tmp_path, "train", "c", "holder")
    assert health.lease_is_fresh(tmp_path, "train")
    assert not health.lease_is_fresh(tmp_path, "train", now=time.time() + health.lease_stale_after_s() + 1)
    health.release_lease(tmp_path, "train")
    assert not health.lease_is_fresh(tmp_path, "train")


def test_garbled_lease_counts_as_stale(tmp_path):
    health.lease_path(tmp_path, "train").write_text("{not json")
    assert not health.lease_is_fresh(tmp_path, "train")


def test_restart_log_round_trips_and_widens_the_restart_window(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_HEALTH_INTERVAL_SECONDS", "60")
    first_window = health.restart_window_s(tmp_path, "train")
    log = health.RestartLog(host_kills=2, crashes=1, history=[{"exit_code": 137}])
    log.save(tmp_path, "train")
    loaded = health.RestartLog.load(tmp_path, "train")
    assert loaded == log and loaded.total == 3
    assert health.restart_window_s(tmp_path, "train") == first_window + health.BACKOFF_BASE_S * (2**3 - 1)
