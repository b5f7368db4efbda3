"""Git for pushtrain: watch a branch, check out one commit per run, push the winning model back.

Every remote (a local bare repo in the demo, a git host over HTTPS or SSH in real use) is fetched into a
bare mirror under the data dir, under a file lock, so concurrent tasks never fight over git's own locks and
a checkout is a cheap local clone.

Credentials come from the ``git_default`` connection (``remote_from_connection``): ``host`` is the
repository URL; for HTTPS, ``login`` and ``password`` (a token), and ``extra.ca_file`` for a host whose
certificate a private CA signed; for SSH, ``extra.key_file`` (a deploy key) and ``extra.known_hosts`` (the
host's key lines as ``ssh-keyscan`` prints them). An SSH host whose key is in neither ``extra.known_hosts``
nor this machine's known_hosts files is refused, with a message that says how to supply the key; host keys
are never accepted blindly. ``extra.read_only`` "true" never pushes.

Every git call that talks to the remote runs in a process group of its own and is stopped, with all its
children, when the remote sends nothing for ``PUSHTRAIN_GIT_TIMEOUT_SECONDS``. Its failure becomes a
``GitError`` that says what to check; credentials never reach a message, a log line, the mirror's config or
a training container, and the host's own git credential helpers are neither asked nor written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pushtrain import settings

log = logging.getLogger(__name__)

SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
_SCP_STYLE = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?!//)")  # git@host:team/repo.git
# Lines git prints while it transfers; they say nothing about why a call failed.
_PROGRESS_LINE = re.compile(
    r"^(remote: )?(Enumerating|Counting|Compressing|Receiving|Resolving|Writing|Total|"
    r"Delta compression|Unpacking|From |To )|\d+% \(\d+/\d+\)"
)
# What a server says when it refuses a push it understood: read-only token or key, protected branch.
_PUSH_REFUSED = re.compile(
    r"\b403\b|read[- ]only|not allowed|permission to .* denied|\[remote rejected\]|"
    r"pre-receive hook declined|protected branch",
    re.IGNORECASE,
)
_LFS_ATTRIBUTE = re.compile(r"\bfilter=lfs\b")
# git-lfs's filter, for this call only: the host need not have run `git lfs install`.
_LFS_FILTER = (
    "-c",
    "filter.lfs.process=git-lfs filter-process",
    "-c",
    "filter.lfs.required=true",
    "-c",
    "filter.lfs.smudge=git-lfs smudge -- %f",
    "-c",
    "filter.lfs.clean=git-lfs clean -- %f",
)
_MIRRORED_REMOTE = "pushtrain_mirrored_remote"  # the attribute by which a fetched mirror knows its remote


class GitError(RuntimeError):
    """A git operation failed; the message names the repository and what to check.

    ``git_said`` is what git printed (credentials scrubbed), empty for a failure found without git.
    """

    def __init__(self, message: str, git_said: str = "") -> None:
        super().__init__(message)
        self.git_said = git_said


@dataclass(frozen=True)
class GitRemote:
    url: str
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    key_file: str | None = None
    known_hosts: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    read_only: bool = False

    @property
    def display_url(self) -> str:
        """The URL without credentials, for logs, mails and lineage."""
        parts = urlsplit(self.url)
        if parts.scheme in SSH_SCHEMES and parts.username and not parts.password:
            return self.url  # ssh://git@host/...: the user is an account name, never a secret
        if parts.password or parts.username:
            # The host part as written (keeps an IPv6 literal's brackets, which ``hostname`` drops).
            return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return self.url

    def fetch_url(self) -> str:
        parts = urlsplit(self.url)
        if self.login and parts.scheme in ("http", "https"):
            userinfo = quote(self.login, safe="") + (
                f":{quote(self.password, safe='')}" if self.password else ""
            )
            return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc.split('@')[-1]}"))
        return self.url

    @property
    def ssh_host(self) -> tuple[str, int] | None:
        """Host and port of an SSH remote (``ssh://`` or scp-style ``user@host:path``); None for others."""
        parts = urlsplit(self.url)
        if parts.scheme in SSH_SCHEMES:
            return parts.hostname or "", parts.port or 22
        scp = None if parts.scheme or self.url.startswith("/") else _SCP_STYLE.match(self.url)
        return (scp["host"], 22) if scp else None

    def environment(self, known_hosts_file: Path | None = None) -> dict[str, str]:
        """What git needs in its environment for this remote (``known_hosts_file``: the extra's lines)."""
        configured = int(os.environ.get("GIT_CONFIG_COUNT") or 0)  # the host's own, kept
        env = {
            "GIT_TERMINAL_PROMPT": "0",  # fail rather than wait for a password nobody will type
            "GIT_ASKPASS": "",  # empty: no askpass program either, whatever the host configures
            # The connection's credentials only: no credential helper of this host is asked, none stores them.
            "GIT_CONFIG_COUNT": str(configured + 1),
            f"GIT_CONFIG_KEY_{configured}": "credential.helper",
            f"GIT_CONFIG_VALUE_{configured}": "",
        }
        if self.ca_file:
            env["GIT_SSL_CAINFO"] = self.ca_file
        # No ConnectTimeout: the silence limit of every call (_run_silence_limited) stops a hung connection.
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        if self.key_file:
            ssh += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        if known_hosts_file is not None:
            ssh += [
                "-o",
                f"UserKnownHostsFile={known_hosts_file}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "UpdateHostKeys=no",
            ]
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
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
            raise GitError(
                f"no repository URL: set the {conn_id!r} connection (AIRFLOW_CONN_GIT_DEFAULT) "
                "with the URL as host, or pass repo_url when triggering"
            )
        return GitRemote(url)
    extra = connection.extra_dejson or {}
    return GitRemote(
        url=url or extra.get("repo_url") or connection.host,
        login=connection.login or None,
        password=connection.password or None,
        key_file=extra.get("key_file") or None,
        known_hosts=extra.get("known_hosts") or None,
        ca_file=extra.get("ca_file") or None,
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


# --- talking to the remote -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finished:
    returncode: int
    stdout: str
    stderr: str
    silent_for: float | None  # set when the call was stopped because the remote sent nothing


@contextmanager
def _remote_environment(remote: GitRemote) -> Iterator[dict[str, str]]:
    """The environment of one call; the extra's known_hosts lines live in a private file only meanwhile."""
    if not remote.known_hosts:
        yield remote.environment()
        return
    with tempfile.TemporaryDirectory(prefix="pushtrain-ssh-") as folder:
        known_hosts = Path(folder) / "known_hosts"
        known_hosts.write_text(remote.known_hosts.strip() + "\n")
        yield remote.environment(known_hosts)


def _run_silence_limited(command: list[str], cwd: Path, env: dict[str, str], silence_s: float) -> _Finished:
    """Run ``command``; stop it and every process it started once it prints nothing for ``silence_s``.

    Network calls ask git for ``--progress``, so a transfer that moves data keeps printing and is never cut
    short, while a remote that accepts the connection and then says nothing is.
    """
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    chunks: dict[int, list[bytes]] = {process.stdout.fileno(): [], process.stderr.fileno(): []}
    silent_for = None
    with selectors.DefaultSelector() as selector:
        for stream in (process.stdout, process.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            ready = selector.select(timeout=silence_s)
            if not ready:
                if process.poll() is None:  # (a child that kept the pipes open after git ended is no hang)
                    silent_for = silence_s
                break
            for key, _ in ready:
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fileobj)
    if silent_for is None and process.returncode is None:
        # Wait without reaping, so the group id cannot be reused before the stragglers below are killed.
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # ssh, git-remote-http, git-lfs: none outlives the call
    process.wait()
    process.stdout.close()
    process.stderr.close()
    stdout, stderr = (b"".join(chunks[fd]).decode(errors="replace") for fd in chunks)
    return _Finished(process.returncode, stdout, stderr, silent_for)


def _talk_to_remote(remote: GitRemote, args: list[str], cwd: Path, doing: str) -> str:
    """Run ``git args`` against the remote; a failure raises ``GitError`` saying what to check."""
    with _remote_environment(remote) as extra:
        finished = _run_silence_limited(
            ["git", *args], cwd, {**os.environ, **extra}, settings.git_timeout_s()
        )
    if finished.silent_for is None and finished.returncode == 0:
        return finished.stdout
    raise GitError(_failure_message(remote, doing, finished), _git_said(remote, finished.stderr))


def _git_said(remote: GitRemote, stderr: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]+", _scrub(stderr, remote))]
    return " | ".join(line for line in lines if line and not _PROGRESS_LINE.search(line))


def _failure_message(remote: GitRemote, doing: str, finished: _Finished) -> str:
    said = _git_said(remote, finished.stderr)
    lowered = said.lower()
    if len(said) > 600:  # ssh's warnings run long; the end holds git's own verdict
        said = "..." + said[-600:]
    ssh = remote.ssh_host
    where = f"{ssh[0]} port {ssh[1]}" if ssh else urlsplit(remote.display_url).netloc or remote.display_url
    if finished.silent_for is not None:
        why = (
            f"the remote sent nothing for {finished.silent_for:g} s, so the call was stopped "
            f"(PUSHTRAIN_GIT_TIMEOUT_SECONDS): check that {where} is a git server that is up and reachable "
            "from this worker (a firewall that swallows packets, or a port that is not git's, looks so)"
        )
    elif "remote host identification has changed" in lowered:
        why = (
            f"the SSH host key of {where} differs from the one in known_hosts: if the host's operators "
            "confirm it changed, put the new key lines in the git_default connection's extra.known_hosts; "
            "otherwise something is intercepting the connection"
        )
    elif "host key verification failed" in lowered or "host key is known" in lowered:
        scan = f"ssh-keyscan -p {ssh[1]} {ssh[0]}" if ssh else "ssh-keyscan <host>"
        why = (
            f"the SSH host key of {where} is unknown here, and pushtrain never accepts an unknown host key: "
            f"add the host's key lines to the git_default connection's extra as known_hosts (print them "
            f"with `{scan}` and compare their fingerprint with the one your git host publishes)"
        )
    elif "unprotected private key file" in lowered or "bad permissions" in lowered:
        why = f"ssh ignores the key file {remote.key_file} because others may read it: chmod 600 it"
    elif "no such identity" in lowered or ("identity file" in lowered and "not accessible" in lowered):
        why = f"the key file {remote.key_file} (extra.key_file) does not exist on this worker"
    elif "permission denied (publickey" in lowered:
        key = (
            f"the key {remote.key_file}" if remote.key_file else "this worker's SSH keys (no extra.key_file)"
        )
        why = (
            f"the SSH server refused {key}: add its public key to the repository as a deploy key, or set "
            "the git_default connection's extra.key_file to the private key that is"
        )
    elif "authentication failed" in lowered or "could not read username" in lowered or " 401" in lowered:
        login = f"login {remote.login!r} and its" if remote.login else "a login and a"
        why = (
            f"the server refused the credentials: set {login} token (password) in the git_default "
            "connection, and check that the token is valid, not expired, and may read the repository"
        )
    elif "ssl certificate problem" in lowered or "certificate verification failed" in lowered:
        why = (
            f"the HTTPS certificate of {where} is not trusted here: if a private CA signed it, set the "
            "git_default connection's extra.ca_file to that CA's PEM file"
        )
    elif "missing object" in lowered or "object does not exist" in lowered or "object not found" in lowered:
        why = (
            "the server lacks the Git LFS content of files in this commit: whoever committed them should run "
            "`git lfs push --all origin`"
        )
    elif (
        ("not found" in lowered and "repository" in lowered)
        or "does not appear to be a git repository" in lowered
        or " 404" in lowered
        or "no such file or directory" in lowered
    ):
        why = (
            f"there is no repository at {remote.display_url}, or the credentials may not see it: check the "
            "URL (the git_default connection's host, or the repo_url Param)"
        )
    elif " 403" in lowered or "permission" in lowered:
        why = "the server refused access with these credentials: give them access to the repository"
    elif "could not resolve host" in lowered or "name or service not known" in lowered:
        why = f"the host name in {remote.display_url} does not resolve: check the URL"
    elif "connection refused" in lowered or "couldn't connect to server" in lowered:
        why = f"nothing accepts connections at {where}: check the URL's host and port, and that the server is up"
    elif "timed out" in lowered:
        why = f"{where} did not answer in time: check that it is reachable from this worker"
    else:
        why = "see what git said"
    return f"cannot {doing} {remote.display_url}: {why} (git said: {said or 'nothing'})"


# --- the mirror and checkouts --------------------------------------------------------------------------


def fetch(remote: GitRemote):
    """Bring the local mirror up to date with the remote; returns the mirror as a ``git.Repo``."""
    import git

    mirror = _mirror_path(remote)
    with _locked(mirror):
        if not (mirror / "HEAD").exists():
            shutil.rmtree(mirror, ignore_errors=True)
            repo = git.Repo.init(mirror, bare=True)
            repo.create_remote("origin", remote.display_url)
        repo = git.Repo(mirror)
        repo.remotes.origin.set_url(remote.display_url)  # no credentials at rest in the mirror's config
        _talk_to_remote(
            remote,
            ["fetch", "--progress", "--prune", remote.fetch_url(), "+refs/heads/*:refs/heads/*"],
            mirror,
            "fetch",
        )
    # In memory only: a checkout from this mirror downloads the commit's Git LFS files from the same remote.
    setattr(repo, _MIRRORED_REMOTE, remote)
    return repo


def branch_head(repo, branch: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    except Exception:
        return None


def branches(repo) -> list[str]:
    """The mirror's branches, as fetched."""
    listed = repo.git.for_each_ref("--format=%(refname:short)", "refs/heads")
    return sorted(line for line in listed.splitlines() if line)


def require_branch(repo, branch: str, remote: GitRemote) -> None:
    """Raise ``GitError`` when the repository has branches but not ``branch``.

    A sensor would otherwise wait for ever on a misspelt branch. An empty repository passes: its first push
    is what the sensor waits for.
    """
    known = branches(repo)
    if known and branch not in known:
        raise GitError(
            f"branch {branch!r} does not exist in {remote.display_url} (its branches: "
            f"{', '.join(known[:20])}): push it, or set the Branch Param (PUSHTRAIN_BRANCH) to one of "
            "those"
        )


def head_at(repo, branch: str, moment: datetime) -> str | None:
    """The commit that was the branch head at ``moment`` (by commit time, first-parent history)."""
    sha = repo.git.rev_list(
        "-1", "--first-parent", f"--before={int(moment.timestamp())}", f"refs/heads/{branch}", "--"
    )
    return sha.strip() or None


def resolve_commit(repo, revision: str) -> str:
    try:
        return repo.git.rev_parse("--verify", f"{revision}^{{commit}}")
    except Exception:
        known = ", ".join(branches(repo)[:20]) or "none"
        raise GitError(
            f"commit or branch {revision!r} is not in the repository (its branches: {known}; "
            "only fetched branches count): check the commit Param"
        ) from None


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    message: str
    committed_at: str


def commit_info(repo, sha: str) -> CommitInfo:
    commit = repo.commit(sha)
    return CommitInfo(
        sha,
        commit.author.name,
        commit.author.email,
        commit.message.strip(),
        commit.committed_datetime.isoformat(),
    )


def checkout(repo, sha: str, destination: Path) -> Path:
    """A working tree of exactly ``sha`` at ``destination`` (replaced if a retry left one).

    Files the commit keeps in Git LFS arrive as their content, downloaded from the remote that ``fetch``
    mirrored into ``repo`` (for another repository, from its own LFS store). Without git-lfs on the worker
    such a commit is an error rather than a tree of pointer files.
    """
    import git

    shutil.rmtree(destination, ignore_errors=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    clone = git.Repo.clone_from(repo.git_dir, destination, no_checkout=True)
    # Pointer files first, whatever LFS filter this host configures: their content comes from ``remote``.
    with clone.git.custom_environment(GIT_LFS_SKIP_SMUDGE="1"):
        clone.git.checkout("--quiet", "--detach", sha)
    if _uses_lfs(destination):
        _materialise_lfs(
            destination, sha, getattr(repo, _MIRRORED_REMOTE, None) or GitRemote(str(repo.git_dir))
        )
    return destination


def _uses_lfs(worktree: Path) -> bool:
    attributes = [worktree / ".gitattributes", *worktree.glob("**/.gitattributes")]
    return any(
        path.is_file() and _LFS_ATTRIBUTE.search(path.read_text(errors="replace")) for path in attributes
    )


def git_lfs_available() -> bool:
    return subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0


def _materialise_lfs(worktree: Path, sha: str, source: GitRemote) -> None:
    """Download the LFS objects of ``sha`` from ``source`` and put their content in place of the pointers."""
    if not git_lfs_available():
        raise GitError(
            "the commit keeps files in Git LFS (filter=lfs in .gitattributes) but git-lfs is not "
            "installed on this worker: install it (Debian package git-lfs) on every Airflow worker"
        )
    # The LFS endpoint of an HTTP remote is <repository URL>/info/lfs; an SSH remote names its own. Given on
    # the command line only: no credentials stored in the checkout's config.
    endpoint = source.fetch_url().rstrip("/")
    if urlsplit(endpoint).scheme in ("http", "https"):
        endpoint += "/info/lfs"
    elif endpoint.startswith("/"):  # the mirror: git-lfs reads a local repository's objects by file URL
        endpoint = Path(endpoint).as_uri()
    timeout = str(max(1, round(settings.git_timeout_s())))
    options = [
        "-c",
        f"lfs.url={endpoint}",
        "-c",
        f"lfs.activitytimeout={timeout}",
        "-c",
        f"lfs.dialtimeout={timeout}",
        *_LFS_FILTER,
    ]
    _talk_to_remote(source, [*options, "lfs", "fetch", "origin", sha], worktree, "fetch the Git LFS files of")
    _talk_to_remote(source, [*options, "lfs", "checkout"], worktree, "check out the Git LFS files of")
    # ``git lfs checkout`` exits 0 even where it replaced nothing: count the files still pointers ("-").
    listed = _talk_to_remote(source, [*options, "lfs", "ls-files"], worktree, "list the Git LFS files of")
    pointers = [line.split(" - ", 1)[1] for line in listed.splitlines() if " - " in line]
    if pointers:
        raise GitError(
            f"{len(pointers)} Git LFS file(s) of {source.display_url} did not arrive as content "
            f"(e.g. {pointers[0]}): the server has no LFS objects for them; push them with `git lfs "
            "push --all`"
        )


def push_model_branch(
    remote: GitRemote, workspace: Path, relative_file: str, branch: str, message: str
) -> str | None:
    """Commit the tuned model file on ``branch`` and push it; None where it is not pushed.

    Not pushed: the connection is read-only (``extra.read_only``), or the server refused the push with these
    credentials (a read-only token or deploy key, a protected branch), which a note in the task log says;
    the model is registered either way. Any other failure (the server unreachable, say) raises ``GitError``,
    so the task's retry pushes again.
    """
    import git

    if remote.read_only:
        log.info(
            "the tuned %s is not pushed: the git_default connection is read-only (extra.read_only)",
            relative_file,
        )
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
        _talk_to_remote(
            remote,
            ["push", "--progress", "--force", remote.fetch_url(), f"HEAD:refs/heads/{branch}"],
            workspace,
            f"push {branch} to",
        )
    except GitError as exc:
        if not _PUSH_REFUSED.search(exc.git_said):
            raise
        log.warning(
            "the tuned %s was NOT pushed to %s: the server refused the push with the git_default "
            "credentials, which look read-only here. The model is registered all the same; to get the "
            "tuned file back as branch %s, give the token or deploy key write access, or set the "
            'connection\'s extra.read_only to "true" to stop trying. %s',
            relative_file,
            remote.display_url,
            branch,
            exc,
        )
        return None
    return repo.head.commit.hexsha


def safe_name(text: str) -> str:
    """Docker- and path-safe form of a run id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")
