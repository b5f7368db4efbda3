"""The health check's rules without Docker: who is to blame for an exit, leases, the restart log."""

from __future__ import annotations

import time

import pytest

from pushtrain import health, supervision
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
        (contract.EXIT_LOAD_ERROR, False, "fatal"),  # syntax error, missing module or name
        (contract.EXIT_BUILD_ERROR, False, "fatal"),  # the builder raised before the first epoch
    ],
)
def test_classify_exit(exit_code, oom, blame):
    assert health.classify_exit(exit_code, oom) == blame


def test_lease_is_fresh_only_while_heartbeats_arrive(tmp_path):
    lease = supervision.Lease(tmp_path, "train", holder="holder")
    assert not supervision.lease_is_fresh(tmp_path, "train")
    lease.renew("c")
    assert supervision.lease_is_fresh(tmp_path, "train")
    stale = time.time() + supervision.lease_stale_after_s() + 1
    assert not supervision.lease_is_fresh(tmp_path, "train", now=stale)
    lease.release()
    assert not supervision.lease_is_fresh(tmp_path, "train")


def test_garbled_lease_counts_as_stale(tmp_path):
    supervision.lease_path(tmp_path, "train").write_text("{not json")
    assert not supervision.lease_is_fresh(tmp_path, "train")


def test_cancel_releases_the_lease_and_says_why_until_a_new_try_clears_it(tmp_path):
    lease = supervision.Lease(tmp_path, "evaluate", holder="holder")
    lease.renew("c")
    lease.cancel("evaluate was stopped")
    assert supervision.cancelled_because(tmp_path, "evaluate") == "evaluate was stopped"
    assert not supervision.lease_is_fresh(tmp_path, "evaluate")
    assert supervision.cancelled_because(tmp_path, "train") is None  # per role
    lease.clear_cancelled()
    assert supervision.cancelled_because(tmp_path, "evaluate") is None


def test_heartbeat_holds_the_lease_until_stopped(tmp_path):
    heartbeat = supervision.Heartbeat(supervision.Lease(tmp_path, "train", holder="task"), "container-a")
    assert supervision.lease_is_fresh(tmp_path, "train")
    heartbeat.stop()
    assert not supervision.lease_path(tmp_path, "train").exists()


def test_restart_log_round_trips_and_widens_the_restart_window(tmp_path, monkeypatch):
    monkeypatch.setenv("PUSHTRAIN_HEALTH_INTERVAL_SECONDS", "60")
    first_window = supervision.restart_window_s(tmp_path, "train")
    log = supervision.RestartLog(host_kills=2, crashes=1, history=[{"exit_code": 137}])
    log.save(tmp_path, "train")
    loaded = supervision.RestartLog.load(tmp_path, "train")
    assert loaded == log and loaded.total == 3
    assert supervision.restart_window_s(tmp_path, "train") == first_window + supervision.BACKOFF_BASE_S * (
        2**3 - 1
    )
