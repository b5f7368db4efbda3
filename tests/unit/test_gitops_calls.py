"""How ``gitops`` talks to remotes, on real processes, sockets and repositories (no git server package needed).

The silence limit stops a call that hangs and every process it started, but not one that keeps talking; a
TLS host with a private CA is trusted exactly when the connection names the CA; a push the server refuses
is a note, not a failure; a commit whose LFS objects nowhere exist is an error, not a tree of pointers. The
servers of a real git host are in ``tests/integration/test_git_servers.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pushtrain import gitops


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Dana",
        "GIT_AUTHOR_EMAIL": "dana@example.com",
        "GIT_COMMITTER_NAME": "Dana",
        "GIT_COMMITTER_EMAIL": "dana@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository and a clone with one pushed commit."""
    bare, work = tmp_path / "origin.git", tmp_path / "work"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git(tmp_path, "init", "--quiet", "--initial-branch=main", str(work))
    (work / "model.py").write_text('HPARAMS = {"epochs": 1}\n')
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "one")
    git(work, "push", "--quiet", str(bare), "HEAD:main")
    return bare, work


def process_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid``, None once it is gone (an unreaped zombie is 'Z')."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


# ------------------------------------------------------------------------------------------ silence limit


def test_a_silent_call_is_stopped_with_every_process_it_started(tmp_path: Path) -> None:
    started = time.monotonic()
    finished = gitops._run_silence_limited(
        ["sh", "-c", "sleep 60 & echo $!; sleep 60"], tmp_path, dict(os.environ), silence_s=1
    )

    assert finished.silent_for == 1
    assert time.monotonic() - started < 5
    background = int(finished.stdout.split()[0])  # a grandchild: sh's background sleep
    deadline = time.monotonic() + 3  # SIGKILL is delivered, not awaited: give the kernel a moment
    while process_state(background) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_state(background) in (None, "Z")


def test_a_call_that_keeps_printing_runs_past_the_limit(tmp_path: Path) -> None:
    finished = gitops._run_silence_limited(
        ["sh", "-c", "for i in 1 2 3 4 5; do echo tick; sleep 0.5; done"],
        tmp_path,
        dict(os.environ),
        silence_s=1.5,
    )

    assert (finished.silent_for, finished.returncode, finished.stdout.split()) == (None, 0, ["tick"] * 5)


def test_fetch_from_a_port_nobody_listens_on_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        gitops.GitError, match="nothing accepts connections at 127.0.0.1:9: check the URL's host"
    ):
        gitops.fetch(gitops.GitRemote("http://127.0.0.1:9/models.git", login="bob", password="hunter2"))


def test_fetch_of_a_path_without_a_repository_says_so(tmp_path: Path) -> None:
    with pytest.raises(gitops.GitError, match=f"there is no repository at {tmp_path}/nope.git"):
        gitops.fetch(gitops.GitRemote(str(tmp_path / "nope.git")))


# ------------------------------------------------------------------------------------------ TLS, private CA


class NotAGitServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the http.server spelling)
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_with_private_ca(tmp_path: Path):
    """An HTTPS server whose certificate a freshly made CA signed; yields (url, CA file)."""
    ca_key, ca_cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    key, request, cert = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    openssl = ["openssl", "req", "-nodes", "-newkey", "rsa:2048", "-subj"]
    subprocess.run(
        [*openssl, "/CN=Test CA", "-x509", "-days", "2", "-keyout", ca_key, "-out", ca_cert],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*openssl, "/CN=127.0.0.1", "-keyout", key, "-out", request], check=True, capture_output=True
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            tmp_path / "san.ext",
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAGitServer)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/models.git", ca_cert
    server.shutdown()
    server.server_close()


def test_a_private_ca_is_trusted_only_when_the_connection_names_it(https_with_private_ca) -> None:
    url, ca_file = https_with_private_ca

    with pytest.raises(
        gitops.GitError,
        match="certificate of 127.0.0.1:.* is not trusted here: if a private CA "
        "signed it, set the git_default connection's extra.ca_file",
    ):
        gitops.fetch(gitops.GitRemote(url, login="bob", password="hunter2"))
    with pytest.raises(gitops.GitError) as trusted:  # TLS holds now; the server is no git host (404)
        gitops.fetch(gitops.GitRemote(url, login="bob", password="hunter2", ca_file=str(ca_file)))

    assert "there is no repository at" in str(trusted.value)
    assert "hunter2" not in str(trusted.value)


# ------------------------------------------------------------------------------------------ push, LFS


def test_a_push_the_server_refuses_is_a_note_not_a_failure(
    origin: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    bare, _ = origin
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushtrain/* branches are protected here' >&2\nexit 1\n")
    hook.chmod(0o755)
    remote = gitops.GitRemote(str(bare))
    workspace = gitops.checkout(
        gitops.fetch(remote), git(bare, "rev-parse", "main"), bare.parent / "checkout"
    )
    (workspace / "model.py").write_text('HPARAMS = {"epochs": 8}\n')

    assert gitops.push_model_branch(remote, workspace, "model.py", "pushtrain/0123abcd", "tuned") is None

    assert git(bare, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    [note] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "NOT pushed" in note and "pre-receive hook declined" in note and "registered all the same" in note


def test_a_push_to_an_unreachable_server_fails_so_the_task_retries(origin: tuple[Path, Path]) -> None:
    bare, _ = origin
    workspace = gitops.checkout(
        gitops.fetch(gitops.GitRemote(str(bare))), git(bare, "rev-parse", "main"), bare.parent / "checkout"
    )
    (workspace / "model.py").write_text('HPARAMS = {"epochs": 8}\n')

    with pytest.raises(
        gitops.GitError, match="cannot push pushtrain/0123abcd to http://127.0.0.1:9/m.git: nothing"
    ):
        gitops.push_model_branch(
            gitops.GitRemote("http://127.0.0.1:9/m.git"), workspace, "model.py", "pushtrain/0123abcd", "tuned"
        )


@pytest.mark.skipif(not gitops.git_lfs_available(), reason="git-lfs is not installed (make test-deps)")
def test_lfs_pointers_whose_objects_exist_nowhere_are_an_error(origin: tuple[Path, Path]) -> None:
    bare, work = origin
    oid = "4" * 64
    (work / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (work / "weights.bin").write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 12\n"
    )
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "a pointer without its object")
    git(work, "push", "--quiet", str(bare), "HEAD:main")
    mirror = gitops.fetch(gitops.GitRemote(str(bare)))

    with pytest.raises(
        gitops.GitError,
        match="the server lacks the Git LFS content of files in this commit: "
        "whoever committed them should run `git lfs push --all origin`",
    ):
        gitops.checkout(mirror, gitops.branch_head(mirror, "main"), bare.parent / "checkout")


def test_known_hosts_live_in_a_private_file_only_during_the_call(tmp_path: Path) -> None:
    remote = gitops.GitRemote("ssh://git@127.0.0.1:9/x.git", known_hosts="[127.0.0.1]:9 ssh-ed25519 AAAA\n")

    with gitops._remote_environment(remote) as env:
        command = env["GIT_SSH_COMMAND"]
        known_hosts = Path(command.split("UserKnownHostsFile=", 1)[1].split()[0])
        assert known_hosts.read_text() == "[127.0.0.1]:9 ssh-ed25519 AAAA\n"
        assert oct(known_hosts.parent.stat().st_mode & 0o777) == "0o700"
    assert not known_hosts.exists()
    assert "StrictHostKeyChecking=yes" in command and "StrictHostKeyChecking=no" not in command
    assert json.dumps(env).count("credential.helper") == 1  # the host's helpers are switched off
