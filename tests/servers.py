"""Real git servers on loopback for the tests, from Debian's packages (``make test-deps`` installs them).

* ``GitHttpServer``: lighttpd with basic auth in front of ``git http-backend`` (smart HTTP) and of a small
  Git LFS batch API (a CGI script; the objects themselves are plain files lighttpd serves and, by WebDAV,
  stores). Two accounts: ``writer`` may push, ``reader`` may only fetch (a push gets 403, as a read-only
  token does on a git host).
* ``GitSshServer``: OpenSSH's sshd with a config, host key and authorized_keys of its own, nothing of the
  host's. Every key is forced through ``git-shell``, as a git host's ``git`` account is; the read-only deploy
  key's forced command refuses ``git-receive-pack``. When the tests run as root, sshd lets root log in with a
  forced command only (``PermitRootLogin forced-commands-only``).
* ``SilentServer``: accepts TCP connections and never says a word.

Each is a context manager that starts the server on a free port and stops every process it started.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

DEBIAN_PACKAGES = {"lighttpd": "lighttpd", "/usr/sbin/sshd": "openssh-server", "git-lfs": "git-lfs"}


def require_programs(*programs: str) -> None:
    """Fail (not skip) with the install command when a server program is missing."""
    missing = [DEBIAN_PACKAGES.get(p, p) for p in programs if not shutil.which(p)]
    if missing:
        raise RuntimeError(
            f"missing {', '.join(missing)}: run `make test-deps` (apt-get install {' '.join(missing)})"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The git CLI with a fixed identity and none of this host's configuration."""
    full_env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Dana Scientist",
        "GIT_AUTHOR_EMAIL": "dana@example.com",
        "GIT_COMMITTER_NAME": "Dana Scientist",
        "GIT_COMMITTER_EMAIL": "dana@example.com",
        "GIT_TERMINAL_PROMPT": "0",
        **(env or {}),
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def init_bare(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--bare", "--initial-branch=main")
    return path


class GitHttpServer:
    """Smart HTTP and Git LFS behind lighttpd with basic auth; repositories under ``root/repos``."""

    WRITER = "writer"
    READER = "reader"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repos = root / "repos"
        self.lfs_store = root / "lfs-store"
        self.port = free_port()
        self.tokens = {
            self.WRITER: f"ghp_{secrets.token_hex(16)}",
            self.READER: f"ro_{secrets.token_hex(16)}",
        }
        self.process: subprocess.Popen | None = None
        self.log = root / "lighttpd.log"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/git/{name}.git"

    def url_with_credentials(self, name: str, account: str = WRITER) -> str:
        return f"http://{account}:{self.tokens[account]}@127.0.0.1:{self.port}/git/{name}.git"

    def create_repo(self, name: str) -> Path:
        return init_bare(self.repos / f"{name}.git")

    def __enter__(self) -> GitHttpServer:
        require_programs("lighttpd")
        for folder in (self.repos, self.lfs_store, self.root / "www"):
            folder.mkdir(parents=True, exist_ok=True)
        backend = Path(git(self.root, "--exec-path")) / "git-http-backend"
        scripts = self.root / "cgi"
        scripts.mkdir()
        # A read-only token may fetch but not push: answered as a git host does, with 403.
        (scripts / "git.cgi").write_text(
            textwrap.dedent(f"""\
            #!/bin/sh
            case "$PATH_INFO?$QUERY_STRING" in
              *git-receive-pack*)
                if [ "$REMOTE_USER" != "{self.WRITER}" ]; then
                  printf 'Status: 403 Forbidden\\r\\nContent-Type: text/plain\\r\\n\\r\\nthis token is read-only\\n'
                  exit 0
                fi;;
            esac
            exec {backend}
            """)
        )
        (scripts / "lfs.cgi").write_text(_LFS_BATCH_CGI.format(store=self.lfs_store, writer=self.WRITER))
        for script in scripts.iterdir():
            script.chmod(0o755)
        users = self.root / "users"
        users.write_text("".join(f"{user}:{token}\n" for user, token in self.tokens.items()))
        config = self.root / "lighttpd.conf"
        config.write_text(
            textwrap.dedent(f"""\
            server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv", "mod_webdav")
            server.document-root = "{self.root / "www"}"
            server.bind = "127.0.0.1"
            server.port = {self.port}
            server.errorlog = "{self.log}"
            server.pid-file = "{self.root / "lighttpd.pid"}"
            server.max-request-size = 65536
            auth.backend = "plain"
            auth.backend.plain.userfile = "{users}"
            auth.require = ("/" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
            $HTTP["url"] =~ "^/git/[^/]+/info/lfs/" {{
              alias.url = ("/git" => "{scripts / "lfs.cgi"}")
              cgi.assign = ("" => "")
            }}
            else $HTTP["url"] =~ "^/git/" {{
              alias.url = ("/git" => "{scripts / "git.cgi"}")
              cgi.assign = ("" => "")
              setenv.add-environment = ("GIT_PROJECT_ROOT" => "{self.repos}", "GIT_HTTP_EXPORT_ALL" => "1")
            }}
            else $HTTP["url"] =~ "^/lfs-objects/" {{
              alias.url = ("/lfs-objects/" => "{self.lfs_store}/")
              webdav.activate = "enable"
            }}
            """)
        )
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                ["lighttpd", "-D", "-f", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.port, self.process, self.log)
        return self

    def __exit__(self, *exc_info) -> None:
        stop(self.process)


# The Git LFS batch API: objects live as <store>/<oid>; lighttpd serves and (WebDAV PUT) stores them, with
# the caller's own Authorization header, which the actions hand back.
_LFS_BATCH_CGI = """#!/usr/bin/python3
import json, os, re, sys

store = "{store}"
request = json.loads(sys.stdin.buffer.read(int(os.environ.get("CONTENT_LENGTH") or 0)) or b"{{}}")
operation = request.get("operation")
if operation == "upload" and os.environ.get("REMOTE_USER") != "{writer}":
    sys.stdout.write("Status: 403 Forbidden\\r\\nContent-Type: application/vnd.git-lfs+json\\r\\n\\r\\n")
    sys.stdout.write(json.dumps({{"message": "this token is read-only"}}))
    sys.exit(0)
header = {{"Authorization": os.environ.get("HTTP_AUTHORIZATION", "")}}
base = "http://" + os.environ["HTTP_HOST"] + "/lfs-objects/"
objects = []
for item in request.get("objects", []):
    oid = str(item.get("oid", ""))
    entry = {{"oid": oid, "size": item.get("size"), "authenticated": True}}
    present = re.fullmatch("[0-9a-f]{{64}}", oid) and os.path.exists(os.path.join(store, oid))
    if operation == "download" and present:
        entry["actions"] = {{"download": {{"href": base + oid, "header": header}}}}
    elif operation == "download":
        entry["error"] = {{"code": 404, "message": "object not found"}}
    elif not present:
        entry["actions"] = {{"upload": {{"href": base + oid, "header": header}}}}
    objects.append(entry)
sys.stdout.write("Content-Type: application/vnd.git-lfs+json\\r\\n\\r\\n")
sys.stdout.write(json.dumps({{"transfer": "basic", "objects": objects}}))
"""


class GitSshServer:
    """sshd on loopback with its own host key; deploy keys forced through git-shell."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self.process: subprocess.Popen | None = None
        self.log = root / "sshd.log"
        self.host_key = root / "host_ed25519"
        self.key = root / "deploy_key"  # read-write
        self.read_only_key = root / "read_only_key"
        self.stranger_key = root / "stranger_key"  # authorized nowhere

    def url(self, repository: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repository}"

    @property
    def known_hosts(self) -> str:
        """The host key line, as ``ssh-keyscan -p <port> 127.0.0.1`` prints it."""
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def __enter__(self) -> GitSshServer:
        require_programs("/usr/sbin/sshd", "ssh-keygen")
        self.root.mkdir(parents=True, exist_ok=True)
        for key in (self.host_key, self.key, self.read_only_key, self.stranger_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)],
                check=True,
                capture_output=True,
            )
        git_shell = shutil.which("git-shell") or "/usr/bin/git-shell"
        read_only_shell = self.root / "read-only-shell"
        read_only_shell.write_text(
            textwrap.dedent(f"""\
            #!/bin/sh
            case "$SSH_ORIGINAL_COMMAND" in
              git-receive-pack*) echo "ERROR: this deploy key is read-only" >&2; exit 1;;
            esac
            exec {git_shell} -c "$SSH_ORIGINAL_COMMAND"
            """)
        )
        read_only_shell.chmod(0o755)
        forced = f'command="{git_shell} -c \\"$SSH_ORIGINAL_COMMAND\\"",restrict'
        authorized = self.root / "authorized_keys"
        authorized.write_text(
            f"{forced} {self.key.with_suffix('.pub').read_text()}"
            f'command="{read_only_shell}",restrict {self.read_only_key.with_suffix(".pub").read_text()}'
        )
        authorized.chmod(0o600)
        config = self.root / "sshd_config"
        config.write_text(
            textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {self.host_key}
            PidFile {self.root / "sshd.pid"}
            AuthorizedKeysFile {authorized}
            AllowUsers {self.user}
            PermitRootLogin forced-commands-only
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            LogLevel VERBOSE
            """)
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.port, self.process, self.log)
        return self

    def __exit__(self, *exc_info) -> None:
        stop(self.process)


class SilentServer:
    """Accepts every TCP connection and never answers: a git host that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def __enter__(self) -> SilentServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.closed.set()
        self.listener.close()
        for connection in self.connections:
            connection.close()
