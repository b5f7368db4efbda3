"""The git side of the pipeline against real, authenticated git servers on loopback.

A git host is played by Debian's lighttpd (basic auth, ``git http-backend``, a Git LFS API) and Debian's
OpenSSH sshd (deploy keys forced through ``git-shell``, a host key of its own), both serving one bare
repository (``tests/servers.py``). The credentials reach pushtrain the way they do in production: as the
``git_default`` connection in ``AIRFLOW_CONN_GIT_DEFAULT``, read by ``gitops.remote_from_connection``.

For HTTP with a token and SSH with a deploy key: the sensor's step sees each new commit, the checkout holds
it, the tuned file goes back to ``pushtrain/<sha>`` with read-write credentials and not with read-only
ones (a note says why). Every failure (wrong token, wrong key, unknown or changed host key, a server that
never answers, no such repository, no such branch) is a ``GitError`` within the time limit that says what
to check, and the failure mail carries it. The last test greps everything these tests produced (messages,
mails, logs, the data dirs) for the tokens and the private keys.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from servers import GitHttpServer, GitSshServer, SilentServer, git, require_programs

from pushtrain import gitops, mail, pipeline, steps

TEMPLATES = Path(__file__).resolve().parents[2] / "include" / "model_templates"
TIMEOUT_S = 8  # PUSHTRAIN_GIT_TIMEOUT_SECONDS in these tests (the default is 15): room for a busy host
SLACK_S = 10  # process start-up and teardown around the limit, on a busy machine
LFS_CONFIG = {
    "filter.lfs.process": "git-lfs filter-process",
    "filter.lfs.required": "true",
    "filter.lfs.clean": "git-lfs clean -- %f",
    "filter.lfs.smudge": "git-lfs smudge -- %f",
    "lfs.locksverify": "false",
}

# Everything the tests below produced that a user or an operator could read; the last test greps it.
TRANSCRIPT: list[str] = []


class Host:
    """The two servers in front of one bare repository, and a working clone that a data scientist pushes from."""

    def __init__(self, root: Path, http: GitHttpServer, ssh: GitSshServer) -> None:
        self.root, self.http, self.ssh = root, http, ssh
        self.bare = http.create_repo("models")
        self.work = root / "work"
        self.work.mkdir()
        git(self.work, "init", "--quiet", "--initial-branch=main")
        shutil.copyfile(TEMPLATES / "knn_sklearn.py", self.work / "model.py")
        (self.work / "pushtrain.toml").write_text('[pushtrain]\ndataset = "digits"\n')
        self.commits = 0

    def push_commit(self, note: str, files: dict[str, bytes] | None = None) -> str:
        """Commit a change and push it over HTTP as the writer, as a data scientist's ``git push``."""
        self.commits += 1
        with (self.work / "CHANGES.md").open("a") as changes:
            changes.write(f"- {note}\n")
        for name, content in (files or {}).items():
            (self.work / name).write_bytes(content)
        lfs = lfs_environment()
        git(self.work, "add", "-A", env=lfs)
        git(self.work, "commit", "--quiet", "-m", note, env=lfs)
        url = self.http.url_with_credentials("models")
        if files:
            git(self.work, "lfs", "push", url, "HEAD", env=lfs)
        git(self.work, "push", "--quiet", url, "HEAD:refs/heads/main", env=lfs)
        return git(self.work, "rev-parse", "HEAD")

    def branches(self) -> dict[str, str]:
        out = git(self.bare, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
        return dict(line.split() for line in out.splitlines())

    def connection(self, transport: str, *, read_only: bool = False, **changes) -> dict:
        """The ``git_default`` connection a platform engineer would write for this host."""
        if transport == "http":
            account = GitHttpServer.READER if read_only else GitHttpServer.WRITER
            connection = {
                "conn_type": "git",
                "host": self.http.url("models"),
                "login": account,
                "password": self.http.tokens[account],
                "extra": {},
            }
        else:
            key = self.ssh.read_only_key if read_only else self.ssh.key
            connection = {
                "conn_type": "git",
                "host": self.ssh.url(self.bare),
                "extra": {"key_file": str(key), "known_hosts": self.ssh.known_hosts},
            }
        extra = {**connection.pop("extra"), **changes.pop("extra", {})}
        return {**connection, **changes, "extra": {k: v for k, v in extra.items() if v is not None}}


def lfs_environment() -> dict[str, str]:
    env = {"GIT_CONFIG_COUNT": str(len(LFS_CONFIG))}
    for n, (key, value) in enumerate(LFS_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{n}"], env[f"GIT_CONFIG_VALUE_{n}"] = key, value
    return env


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Host:
    require_programs("git-lfs")
    root = tmp_path_factory.mktemp("git-host")
    with GitHttpServer(root / "http") as http, GitSshServer(root / "ssh") as ssh:
        host = Host(root, http, ssh)
        host.push_commit("first model")
        yield host


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """A fresh data dir per test, a short git time limit, and every log line kept for the secrets test."""
    monkeypatch.setenv("PUSHTRAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PUSHTRAIN_GIT_TIMEOUT_SECONDS", str(TIMEOUT_S))
    caplog.set_level("DEBUG")
    yield tmp_path / "data"
    TRANSCRIPT.append(caplog.text)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            TRANSCRIPT.append(path.read_bytes().decode(errors="replace"))


def use_connection(monkeypatch: pytest.MonkeyPatch, connection: dict) -> gitops.GitRemote:
    monkeypatch.setenv("AIRFLOW_CONN_GIT_DEFAULT", json.dumps(connection))
    return gitops.remote_from_connection()


def find(
    remote: gitops.GitRemote, run_id: str, commit: str | None = None, branch: str = "main"
) -> dict | None:
    return steps.find_commit_to_train(
        remote=remote,
        branch=branch,
        dag_run_id=run_id,
        run_type="scheduled",
        data_interval_end=None,
        explicit_commit=commit,
    )


TRANSPORTS = ["http", "ssh"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_sensor_sees_each_new_commit_and_the_checkout_holds_it(
    host: Host, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = use_connection(monkeypatch, host.connection(transport))
    first = host.branches()["main"]

    found = find(remote, f"scheduled__{transport}-1")
    assert found["commit"] == first and found["repo_url"] == remote.display_url
    assert find(remote, f"scheduled__{transport}-2") is None  # nothing new: the sensor keeps waiting

    second = host.push_commit(f"a push seen over {transport}")
    found = find(remote, f"scheduled__{transport}-2")
    assert found["commit"] == second

    checked_out = steps.checkout_commit(found, {}, f"scheduled__{transport}-2", remote)
    workspace = pipeline.workspace_dir(checked_out["pipeline_id"]) / "repo"
    assert git(workspace, "rev-parse", "HEAD") == second
    assert f"a push seen over {transport}" in (workspace / "CHANGES.md").read_text()
    record = pipeline.Pipeline.load(checked_out["pipeline_id"])
    assert record.repo_url == remote.display_url and record.author_email == "dana@example.com"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_write_credentials_push_the_tuned_file_to_its_branch(
    host: Host, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = use_connection(monkeypatch, host.connection(transport))
    sha = host.push_commit(f"to be tuned over {transport}")
    checked_out = steps.checkout_commit(
        find(remote, f"scheduled__push-{transport}"), {}, f"scheduled__push-{transport}", remote
    )
    workspace = pipeline.workspace_dir(checked_out["pipeline_id"]) / "repo"
    tuned = (workspace / "model.py").read_text().replace('"n_neighbors": 75', '"n_neighbors": 3')
    assert tuned != (workspace / "model.py").read_text()
    (workspace / "model.py").write_text(tuned)
    branch = f"pushtrain/{sha[:8]}"

    pushed = gitops.push_model_branch(remote, workspace, "model.py", branch, "pushtrain: tuned model.py")

    assert host.branches()[branch] == pushed
    assert git(host.bare, "show", f"{branch}:model.py") == tuned.rstrip("\n")
    assert git(host.bare, "rev-parse", f"{branch}^") == sha
    assert git(host.bare, "diff", "--name-only", sha, branch) == "model.py"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_only_credentials_fetch_but_do_not_push_and_say_why(
    host: Host, transport: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    remote = use_connection(monkeypatch, host.connection(transport, read_only=True))
    sha = host.push_commit(f"read-only over {transport}")
    found = find(remote, f"scheduled__ro-{transport}")
    assert found["commit"] == sha
    checked_out = steps.checkout_commit(found, {}, f"scheduled__ro-{transport}", remote)
    workspace = pipeline.workspace_dir(checked_out["pipeline_id"]) / "repo"
    (workspace / "model.py").write_text((workspace / "model.py").read_text() + "\n# tuned\n")
    before = host.branches()

    pushed = gitops.push_model_branch(remote, workspace, "model.py", f"pushtrain/{sha[:8]}", "tuned")

    assert pushed is None
    assert host.branches() == before
    notes = [
        r.getMessage() for r in caplog.records if r.name == "pushtrain.gitops" and r.levelname == "WARNING"
    ]
    assert len(notes) == 1, notes
    assert "NOT pushed" in notes[0] and "read-only" in notes[0] and "write access" in notes[0]
    assert ("403" if transport == "http" else "this deploy key is read-only") in notes[0]


def test_a_git_lfs_file_arrives_as_its_content(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = os.urandom(20_000)
    (host.work / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    sha = host.push_commit("weights in LFS", {"weights.bin": weights})
    assert git(host.bare, "show", f"{sha}:weights.bin").startswith(
        "version https://git-lfs.github.com/spec/v1"
    )
    remote = use_connection(monkeypatch, host.connection("http", read_only=True))

    checked_out = steps.checkout_commit(find(remote, "scheduled__lfs"), {}, "scheduled__lfs", remote)

    workspace = pipeline.workspace_dir(checked_out["pipeline_id"]) / "repo"
    assert (workspace / "weights.bin").read_bytes() == weights


# --------------------------------------------------------------------------------------------- failures


class FailedSensor:
    """What ``mail.failure_mail`` reads of a task instance: train_on_push's sensor failed, no XCom yet."""

    dag_id, task_id, run_id = "train_on_push", "wait_for_commit", "scheduled__2026-11-30T00:00:00+00:00"

    def xcom_pull(self, task_ids):
        return None


def wrong_token(host: Host, silent: SilentServer) -> dict:
    return host.connection("http", password="ghp_" + "0" * 32)


def wrong_key(host: Host, silent: SilentServer) -> dict:
    return host.connection("ssh", extra={"key_file": str(host.ssh.stranger_key)})


def unknown_host_key(host: Host, silent: SilentServer) -> dict:
    return host.connection("ssh", extra={"known_hosts": None})


def changed_host_key(host: Host, silent: SilentServer) -> dict:
    impostor = host.ssh.stranger_key.with_suffix(".pub").read_text().split()[:2]
    return host.connection("ssh", extra={"known_hosts": f"[127.0.0.1]:{host.ssh.port} {' '.join(impostor)}"})


def silent_http(host: Host, silent: SilentServer) -> dict:
    return host.connection("http", host=f"http://127.0.0.1:{silent.port}/git/models.git")


def silent_ssh(host: Host, silent: SilentServer) -> dict:
    return host.connection("ssh", host=f"ssh://git@127.0.0.1:{silent.port}/srv/models.git")


def missing_repo_http(host: Host, silent: SilentServer) -> dict:
    return host.connection("http", host=host.http.url("no-such-models"))


def missing_repo_ssh(host: Host, silent: SilentServer) -> dict:
    return host.connection("ssh", host=host.ssh.url(host.bare.with_name("no-such-models.git")))


FAILURES = [
    (wrong_token, "the server refused the credentials: set login 'writer' and its token"),
    (wrong_key, "the SSH server refused the key"),
    (
        unknown_host_key,
        "is unknown here, and pushtrain never accepts an unknown host key: add the host's key "
        "lines to the git_default connection's extra as known_hosts",
    ),
    (changed_host_key, "differs from the one in known_hosts"),
    (
        silent_http,
        f"the remote sent nothing for {TIMEOUT_S} s, so the call was stopped (PUSHTRAIN_GIT_TIMEOUT_SECONDS)",
    ),
    (
        silent_ssh,
        f"the remote sent nothing for {TIMEOUT_S} s, so the call was stopped (PUSHTRAIN_GIT_TIMEOUT_SECONDS)",
    ),
    (missing_repo_http, "there is no repository at"),
    (missing_repo_ssh, "there is no repository at"),
]


@pytest.fixture(scope="module")
def silent():
    with SilentServer() as server:
        yield server


@pytest.mark.parametrize(("connection_of", "explanation"), FAILURES, ids=[f.__name__ for f, _ in FAILURES])
def test_a_failing_remote_fails_the_sensor_in_time_with_what_to_check(
    host: Host, silent: SilentServer, monkeypatch: pytest.MonkeyPatch, connection_of, explanation: str
) -> None:
    remote = use_connection(monkeypatch, connection_of(host, silent))
    children_before = child_processes()
    started = time.monotonic()

    with pytest.raises(gitops.GitError) as caught:
        find(remote, "scheduled__failing")

    took = time.monotonic() - started
    assert took < TIMEOUT_S + SLACK_S, f"the failure took {took:.1f} s"
    message = str(caught.value)
    assert message.startswith(f"cannot fetch {remote.display_url}: "), message
    assert explanation in message, message
    assert child_processes() == children_before  # git, ssh and curl were all stopped
    assert not list(Path(tempfile.gettempdir()).glob("pushtrain-ssh-*"))  # the known_hosts file went too
    assert_in_failure_mail(caught.value)


def test_a_branch_that_does_not_exist_says_which_ones_do(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = use_connection(monkeypatch, host.connection("http"))

    with pytest.raises(gitops.GitError) as asked:  # a run triggered by hand for that branch
        find(remote, "manual__typo", commit="mian")
    with pytest.raises(gitops.GitError) as watched:  # the sensor's check of the Branch Param
        gitops.require_branch(gitops.fetch(remote), "mian", remote)

    assert str(asked.value).startswith("commit or branch 'mian' is not in the repository (its branches: main")
    assert str(watched.value).startswith(
        f"branch 'mian' does not exist in {remote.display_url} (its branches: main"
    )
    assert "set the Branch Param" in str(watched.value)
    gitops.require_branch(gitops.fetch(remote), "main", remote)  # the real branch passes
    for error in (asked.value, watched.value):
        assert_in_failure_mail(error)


def assert_in_failure_mail(error: Exception) -> None:
    subject, body, _ = mail.failure_mail({"ti": FailedSensor(), "exception": error})
    assert "failed at wait_for_commit" in subject
    assert html.escape(str(error)) in body
    TRANSCRIPT.extend([str(error), subject, body])


def child_processes() -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # the parent pid
            children.add(int(stat.parent.name))
    return children


# ---------------------------------------------------------------------------------------------- secrets


def test_no_token_password_or_private_key_appears_anywhere(host: Host) -> None:
    # Last in this module: every test above has added what it produced.
    assert len(TRANSCRIPT) > 20
    text = "\n".join(TRANSCRIPT)
    secrets = [*host.http.tokens.values(), "ghp_" + "0" * 32]
    for key in (host.ssh.key, host.ssh.read_only_key, host.ssh.stranger_key):
        body = [line for line in key.read_text().splitlines() if "PRIVATE KEY" not in line]
        secrets += [line for line in body if len(line) >= 16]
    for secret in secrets:
        assert secret not in text, f"a secret leaked: ...{secret[-6:]}"
    assert not re.search(r"://[^/\s]*:[^/\s@]+@", text), "a URL with credentials leaked"
