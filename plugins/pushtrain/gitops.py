"""Git for pushtrain: watch a branch, check out one commit per run, push the winning model back.

Every remote (a local bare repo in the demo, any URL in real use) is fetched into a bare mirror under the
data dir, under a file lock, so concurrent tasks never fight over git's own locks and a checkout is a cheap
local clone. Credentials come from the ``git_default`` connection: ``host`` is the repository URL,
``login``/``password`` are used for HTTPS, ``extra.key_file`` for SSH; they never reach a log line or a
training container.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pushtrain import settings


class GitError(RuntimeError):
    """A git operation failed; the message names the repository and what to check."""


@dataclass(frozen=True)
class GitRemote:
    url: str
    login: str | None = None
    password: str | None = None
    key_file: str | None = None
    read_only: bool = False

    @property
    def display_url(self) -> str:
        """The URL without credentials, for logs, mails and lineage."""
        parts = urlsplit(self.url)
        if parts.password or parts.username:
            # The host part as written (keeps an IPv6 literal's brackets, which ``hostname`` drops).
            return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return self.url

    def fetch_url(self) -> str:
        parts = urlsplit(self.url)
        if self.login and parts.scheme in ("http", "https"):
            userinfo = quote(self.login, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
            return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc.split('@')[-1]}"))
        return self.url

    def environment(self) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0"}  # fail rather than wait for a password nobody will type
        if self.key_file:
            env["GIT_SSH_COMMAND"] = f"ssh -i {self.key_file} -o IdentitiesOnly=yes -o BatchMode=yes"
        return env


def remote_from_connection(conn_id: str = settings.GIT_CONN_ID, url: str | None = None) -> GitRemote:
    """The watched remote: ``url`` if given (a Param), else the connection's host; credentials from it."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    try:
        connection = BaseHook.get_connection(conn_id)
    except (AirflowNotFoundException, AirflowRuntimeError):  # not defined: the URL Param must do
        connection = None
    if connection is None:
        if not url:
            raise GitError(f"no repository URL: set the {conn_id!r} connection (AIRFLOW_CONN_GIT_DEFAULT) "
                           "with the URL as host, or pass repo_url when triggering")
        return GitRemote(url)
    extra = connection.extra_dejson or {}
    return GitRemote(
        url=url or extra.get("repo_url") or connection.host,
        login=connection.login or None,
        password=connection.password or None,
        key_file=extra.get("key_file"),
        read_only=str(extra.get("read_only", "false")).lower() == "true",
    )


def _mirror_path(remote: GitRemote) -> Path:
    key = hashlib.sha256(remote.display_url.encode()).hexdigest()[:16]
    return settings.data_dir() / "git-mirrors" / f"{key}.git"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _scrub(text: str, remote: GitRemote) -> str:
    """``text`` without any form of the remote's password: the connection's, or one written in the URL."""
    secrets = {remote.fetch_url(), remote.url} - {remote.display_url}
    for password in (remote.password, urlsplit(remote.url).password):
        if password:
            secrets |= {password, quote(password, safe=""), unquote(password)}
    for secret in sorted(secrets, key=len, reverse=True):  # a whole URL before the password inside it
        text = text.replace(secret, "***")
    return text


def fetch(remote: GitRemote):
    """Bring the local mirror up to date with the remote; returns the mirror as a ``git.Repo``."""
    import git

    mirror = _mirror_path(remote)
    with _locked(mirror):
        try:
            if not (mirror / "HEAD").exists():
                shutil.rmtree(mirror, ignore_errors=True)
                repo = git.Repo.init(mirror, bare=True)
                repo.create_remote("origin", remote.display_url)
            repo = git.Repo(mirror)
            repo.remotes.origin.set_url(remote.display_url)  # no credentials at rest in the mirror's config
            with repo.git.custom_environment(**remote.environment()):
                repo.git.fetch(remote.fetch_url(), "+refs/heads/*:refs/heads/*", "--prune", "--quiet")
        except git.GitCommandError as exc:
            raise GitError(f"cannot fetch {remote.display_url}: {_scrub(str(exc.stderr).strip(), remote)} "
                           "(check the URL and the git_default connection's credentials)") from None
    return repo


def branch_head(repo, branch: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    except Exception:
        return None


def head_at(repo, branch: str, moment: datetime) -> str | None:
    """The commit that was the branch head at ``moment`` (by commit time, first-parent history)."""
    sha = repo.git.rev_list("-1", "--first-parent", f"--before={int(moment.timestamp())}",
                            f"refs/heads/{branch}", "--")
    return sha.strip() or None


def resolve_commit(repo, revision: str) -> str:
    try:
        return repo.git.rev_parse("--verify", f"{revision}^{{commit}}")
    except Exception:
        raise GitError(f"commit {revision!r} is not in the repository (fetched branches only)") from None


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    message: str
    committed_at: str


def commit_info(repo, sha: str) -> CommitInfo:
    commit = repo.commit(sha)
    return CommitInfo(sha, commit.author.name, commit.author.email, commit.message.strip(),
                      commit.committed_datetime.isoformat())


def checkout(repo, sha: str, destination: Path) -> Path:
    """A working tree of exactly ``sha`` at ``destination`` (replaced if a retry left one)."""
    import git

    shutil.rmtree(destination, ignore_errors=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    clone = git.Repo.clone_from(repo.git_dir, destination, no_checkout=True)
    clone.git.checkout("--quiet", "--detach", sha)
    return destination


def push_model_branch(remote: GitRemote, workspace: Path, relative_file: str, branch: str,
                      message: str) -> str | None:
    """Commit the tuned model file on ``branch`` and push it; None where the remote is read-only."""
    import git

    if remote.read_only:
        return None
    repo = git.Repo(workspace)
    with repo.config_writer() as config:
        config.set_value("user", "name", "pushtrain")
        config.set_value("user", "email", settings.git_email())
    repo.git.checkout("-B", branch)
    repo.index.add([relative_file])
    if repo.index.diff("HEAD"):  # a retry finds its commit made already: push it again, add no empty one
        repo.index.commit(message)
    try:
        with repo.git.custom_environment(**remote.environment()):
            repo.git.push("--force", remote.fetch_url(), f"HEAD:refs/heads/{branch}")
    except git.GitCommandError as exc:
        raise GitError(f"cannot push {branch} to {remote.display_url}: "
                       f"{_scrub(str(exc.stderr).strip(), remote)}") from None
    return repo.head.commit.hexsha


def safe_name(text: str) -> str:
    """Docker- and path-safe form of a run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
