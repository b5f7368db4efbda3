"""The ``git_default`` connection as ``gitops`` reads it: which fields become which git settings."""

from __future__ import annotations

import json

import pytest

from pushtrain import gitops

KNOWN_HOSTS = (
    "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
)


def remote_of(monkeypatch: pytest.MonkeyPatch, connection: dict) -> gitops.GitRemote:
    monkeypatch.setenv("AIRFLOW_CONN_GIT_DEFAULT", json.dumps(connection))
    return gitops.remote_from_connection()


def test_ssh_connection_carries_key_and_known_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = remote_of(
        monkeypatch,
        {
            "conn_type": "git",
            "host": "git@git.example.com:team/models.git",
            "extra": {"key_file": "/secrets/deploy key", "known_hosts": KNOWN_HOSTS, "read_only": "true"},
        },
    )

    assert (remote.key_file, remote.known_hosts, remote.read_only) == (
        "/secrets/deploy key",
        KNOWN_HOSTS,
        True,
    )
    assert remote.ssh_host == ("git.example.com", 22)
    command = remote.environment()["GIT_SSH_COMMAND"]
    assert "-i '/secrets/deploy key' -o IdentitiesOnly=yes" in command  # a path with a space stays one word
    assert "UserKnownHostsFile" not in command  # the lines become a file only for the length of a call


def test_https_connection_carries_token_and_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = remote_of(
        monkeypatch,
        {
            "conn_type": "git",
            "host": "https://git.example.com/team/models.git",
            "login": "pushtrain-bot",
            "password": "glpat-s3cret",
            "extra": {"ca_file": "/etc/pushtrain/corp-ca.pem"},
        },
    )

    assert remote.environment()["GIT_SSL_CAINFO"] == "/etc/pushtrain/corp-ca.pem"
    assert remote.ssh_host is None and not remote.read_only
    assert "glpat-s3cret" not in repr(remote)  # a log line or traceback that shows the remote shows no token


@pytest.mark.parametrize(
    ("url", "host", "display"),
    [
        (
            "ssh://git@git.example.com:2222/team/models.git",
            ("git.example.com", 2222),
            "ssh://git@git.example.com:2222/team/models.git",
        ),
        ("ssh://git:pw@git.example.com/m.git", ("git.example.com", 22), "ssh://git.example.com/m.git"),
        ("git@github.com:team/models.git", ("github.com", 22), "git@github.com:team/models.git"),
        ("https://git.example.com/team/models.git", None, "https://git.example.com/team/models.git"),
        ("/srv/git/models.git", None, "/srv/git/models.git"),
    ],
    ids=["ssh url with port", "ssh url with password", "scp style", "https", "local path"],
)
def test_ssh_host_and_display_url(url: str, host: tuple | None, display: str) -> None:
    remote = gitops.GitRemote(url)

    assert remote.ssh_host == host
    assert remote.display_url == display


def test_the_hosts_own_git_config_from_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")

    env = gitops.GitRemote("https://git.example.com/m.git").environment()

    assert (env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_2"], env["GIT_CONFIG_VALUE_2"]) == (
        "3",
        "credential.helper",
        "",
    )
    assert "GIT_CONFIG_KEY_0" not in env
