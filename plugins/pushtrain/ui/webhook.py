"""The signed git webhook: ``POST /pushtrain/hooks/git`` starts ``train_on_push`` for the pushed commit.

Git hosts cannot log in to Airflow, so this route has no Airflow login; the shared secret is its
authentication, and nothing happens for a request without a valid signature. The checks, in order, each
with its answer (a JSON body ``{"status", "reason"}`` a git host shows in its delivery log):

1. the body is read up to ``MAX_BODY_BYTES``: more is **413**, and the rest is not read;
2. no secret configured (or one under ``MIN_SECRET_LENGTH`` characters): **503**, nothing is verified;
3. the signature, over the raw bytes, compared in constant time (``hmac.compare_digest``): missing or wrong
   is **401**. This comes before parsing, so an unsigned caller learns nothing about the parser;
4. the body must be a JSON object: else **400**;
5. events other than a push, pushes to other branches, tags and branch deletions: **200** with the reason;
6. a repository pushtrain does not watch: **200** with the reason;
7. then the push is handed to ``starter.start_training``: **202** started, **200** already started (a
   redelivery) or already claimed by another run, **429** when too many runs of that repository are queued.

Senders (the provider is told by its event header):

==========  ======================  ==============================================================
provider    event header            signature
==========  ======================  ==============================================================
GitHub      ``X-GitHub-Event``      ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``
Gitea       ``X-Gitea-Event``       ``X-Gitea-Signature: <hex HMAC-SHA256 of the body>``
Forgejo     ``X-Forgejo-Event``     ``X-Forgejo-Signature: <hex HMAC-SHA256 of the body>``
GitLab      ``X-Gitlab-Event``      ``X-Gitlab-Token: <the secret itself>``
plain JSON  (none)                  ``X-Hub-Signature-256`` as GitHub; body ``{"repository", "ref", "after"}``
==========  ======================  ==============================================================

The secret is the password of the ``pushtrain_webhook`` connection, or else ``PUSHTRAIN_WEBHOOK_SECRET``;
it is never logged. Watched repositories: the ``git_default`` connection's (what the sensor watches), plus
any URLs listed in the ``pushtrain_webhook`` connection's extra as ``{"repositories": [...]}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

WEBHOOK_CONN_ID = "pushtrain_webhook"
SECRET_ENV = "PUSHTRAIN_WEBHOOK_SECRET"
MAX_BODY_BYTES = 2 * 1024 * 1024  # a push of hundreds of commits stays far below; GitHub caps at 25 MB
MIN_SECRET_LENGTH = 16
ZERO_SHA = re.compile(r"0+")
SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
BRANCH_REF = "refs/heads/"


class WebhookError(Exception):
    """A request the webhook refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Provider:
    name: str
    event_header: str | None
    push_events: tuple[str, ...]


GITHUB = Provider("github", "x-github-event", ("push",))
GITEA = Provider("gitea", "x-gitea-event", ("push",))
FORGEJO = Provider("forgejo", "x-forgejo-event", ("push",))
GITLAB = Provider("gitlab", "x-gitlab-event", ("Push Hook",))
PLAIN = Provider("plain", None, ())
# Gitea and Forgejo also send X-GitHub-Event for compatibility: look for their own header first.
PROVIDERS = (FORGEJO, GITEA, GITLAB, GITHUB)


def detect_provider(headers: Any) -> Provider:
    return next((p for p in PROVIDERS if p.event_header and p.event_header in headers), PLAIN)


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(provider: Provider, headers: Any, body: bytes, secret: str) -> bool:
    """Whether the request carries the provider's proof of the secret, checked in constant time."""
    if provider is GITLAB:
        token = headers.get("x-gitlab-token", "")
        return bool(token) and hmac.compare_digest(token.encode(), secret.encode())
    if provider in (GITEA, FORGEJO):
        given = headers.get(f"x-{provider.name}-signature", "").strip().lower()
        return bool(given) and hmac.compare_digest(given.encode(), _hmac_hex(secret, body).encode())
    given = headers.get("x-hub-signature-256", "").strip()
    expected = "sha256=" + _hmac_hex(secret, body)
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value for ``body``: what a sender (the demo's curl line, a test) sends."""
    return "sha256=" + _hmac_hex(secret, body)


def push_body(repository: str, sha: str, branch: str) -> bytes:
    """A plain push event, as a post-receive hook (or ``make demo``'s curl line) sends it."""
    return json.dumps({"repository": repository, "ref": f"{BRANCH_REF}{branch}", "after": sha}).encode()


def deliver_push(
    url: str,
    secret: str,
    repository: str,
    sha: str,
    branch: str = "main",
    *,
    signature: str | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, Any]]:
    """POST a signed plain push event to the webhook at ``url``; returns the status and the JSON answer.

    ``signature`` replaces the correct one (a test of what a forged request gets).
    """
    import urllib.error
    import urllib.request

    body = push_body(repository, sha, branch)
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature or sign(body, secret)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            answer = json.loads(error.read() or b"{}")
        except ValueError:
            answer = {}
        return error.code, answer


# --- the push ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    provider: str
    branch: str
    sha: str
    repository_urls: tuple[str, ...]  # every address the payload gives for the repository
    repository_name: str
    pusher: str
    delivery: str


@dataclass(frozen=True)
class Ignored:
    reason: str


def _strings(*values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in values if isinstance(v, str) and v.strip()))


def parse_push(provider: Provider, headers: Any, payload: Any) -> Push | Ignored:
    """The push in a verified payload; ``Ignored`` for what is not a push to a branch; 400 when malformed."""
    if provider.event_header:
        event = headers.get(provider.event_header, "")
        if event not in provider.push_events:
            return Ignored(f"{provider.name} event {event!r} is not a push")
    if not isinstance(payload, dict):
        raise WebhookError(400, "the body must be a JSON object")
    ref, after = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not isinstance(after, str):
        raise WebhookError(400, "a push event needs the strings 'ref' and 'after' (the pushed commit)")
    if not ref.startswith(BRANCH_REF):
        return Ignored(f"{ref} is not a branch")
    if ZERO_SHA.fullmatch(after):
        return Ignored(f"{ref} was deleted")
    sha = after.lower()
    if not SHA.fullmatch(sha):
        raise WebhookError(
            400, f"'after' must be a full commit SHA (40 or 64 hex digits), got {after[:80]!r}"
        )
    repository = payload.get("repository")
    if provider is GITLAB:
        project = payload.get("project") if isinstance(payload.get("project"), dict) else {}
        repo = repository if isinstance(repository, dict) else {}
        urls = _strings(
            project.get("git_http_url"),
            project.get("git_ssh_url"),
            project.get("web_url"),
            repo.get("git_http_url"),
            repo.get("git_ssh_url"),
            repo.get("url"),
            repo.get("homepage"),
        )
        name = project.get("path_with_namespace") or repo.get("name") or ""
        pusher = payload.get("user_username") or payload.get("user_name") or ""
        delivery = headers.get("x-gitlab-event-uuid", "") or headers.get("x-gitlab-webhook-uuid", "")
    else:
        if isinstance(repository, str):
            repository = {"url": repository}
        repo = repository if isinstance(repository, dict) else {}
        urls = _strings(
            repo.get("clone_url"),
            repo.get("ssh_url"),
            repo.get("html_url"),
            repo.get("git_url"),
            repo.get("url"),
        )
        name = repo.get("full_name") or repo.get("name") or (urls[0] if urls else "")
        pusher_info = payload.get("pusher")
        pusher = (
            (pusher_info.get("name") or pusher_info.get("login") or "")
            if isinstance(pusher_info, dict)
            else ""
        )
        delivery = headers.get(f"x-{provider.name}-delivery", "") if provider.event_header else ""
    if not urls:
        raise WebhookError(400, "the push names no repository URL")
    return Push(
        provider.name,
        ref.removeprefix(BRANCH_REF),
        sha,
        urls,
        str(name)[:200],
        str(pusher)[:100],
        str(delivery)[:100],
    )


# --- which repositories are watched --------------------------------------------------------------------


def repository_key(url: str) -> str:
    """One spelling per repository: ``host/owner/name`` for URLs and scp-style addresses, else the path.

    ``https://Git.Example.com/team/model.git``, ``git@git.example.com:team/model`` and
    ``ssh://git@git.example.com:2222/team/model.git`` all give ``git.example.com/team/model``.
    """
    text = url.strip()
    scp = re.fullmatch(r"(?:[^@/\s]+@)?([\w.-]+):(?!//)(.+)", text)
    if scp and "://" not in text and not text.startswith("/"):
        host, path = scp[1], scp[2]
    elif "://" in text:
        parts = urlsplit(text)
        if parts.scheme == "file":
            host, path = "", str(Path(parts.path).resolve())
        else:
            host, path = parts.hostname or "", parts.path
    else:
        host, path = "", str(Path(text).resolve())
    path = path.rstrip("/").removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path.strip('/').lower()}" if host else path


@dataclass(frozen=True)
class WatchedRepository:
    conf_url: str  # what the run's repo_url Param gets: "" for the git_default connection's repository
    ledger_url: str  # the URL the DAG keys the ledger on (its remote's display_url)
    key: str  # repository_key of it

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1] or "repository"


def match_repository(push: Push, watched: list[WatchedRepository]) -> WatchedRepository | None:
    keys = {repository_key(url) for url in push.repository_urls}
    return next((repo for repo in watched if repo.key in keys), None)


def _connection(conn_id: str):
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    try:
        return BaseHook.get_connection(conn_id)
    except (AirflowNotFoundException, AirflowRuntimeError):
        return None


def configured_secret() -> str | None:
    """The webhook secret: the connection's password, else the environment variable; None if neither."""
    connection = _connection(WEBHOOK_CONN_ID)
    secret = (connection.password if connection else None) or os.environ.get(SECRET_ENV, "")
    return secret.strip() or None


def watched_repositories() -> list[WatchedRepository]:
    """The repository of ``git_default`` (what scheduled runs watch) and the webhook connection's list."""
    from pushtrain import gitops

    watched = []
    try:
        default = gitops.remote_from_connection()
    except gitops.GitError:
        default = None
    if default is not None:
        watched.append(WatchedRepository("", default.display_url, repository_key(default.display_url)))
    connection = _connection(WEBHOOK_CONN_ID)
    extra = (connection.extra_dejson or {}) if connection else {}
    listed = extra.get("repositories", [])
    for url in listed if isinstance(listed, list) else []:
        if isinstance(url, str) and url.strip():
            remote = gitops.remote_from_connection(url=url.strip())
            watched.append(
                WatchedRepository(url.strip(), remote.display_url, repository_key(remote.display_url))
            )
    return watched


# --- the route -----------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise WebhookError(413, f"the body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookError(413, f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, outcome: str, reason: str, **details: Any) -> JSONResponse:
    return JSONResponse({"status": outcome, "reason": reason, **details}, status_code=status)


@dataclass(frozen=True)
class WebhookConfig:
    """Where the route gets its secret, its watched repositories and the watched branch; and what starts."""

    secret: Callable[[], str | None]
    repositories: Callable[[], list[WatchedRepository]]
    branch: Callable[[], str]
    start: Callable[[Push, WatchedRepository], Any]  # returns what happened: .status, .reason, .run_id,
    # .dag_id and .http_status (``starter.Started``)


def make_router(config: Callable[[], WebhookConfig]) -> APIRouter:
    """The webhook route; ``config()`` gives the secret, repositories and starter of each request."""
    router = APIRouter()

    @router.post("/hooks/git", name="git_webhook")
    async def git_webhook(request: Request) -> JSONResponse:
        """Start training for a signed push event; see the module docstring for every answer."""
        return await handle(request, config())

    return router


async def handle(request: Request, config: WebhookConfig) -> JSONResponse:
    provider = detect_provider(request.headers)
    try:
        body = await read_body(request)
        secret = await run_in_threadpool(config.secret)
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            raise WebhookError(
                503,
                f"no webhook secret of at least {MIN_SECRET_LENGTH} characters is "
                f"configured: set the password of the {WEBHOOK_CONN_ID} connection or "
                f"{SECRET_ENV}",
            )
        if not signature_valid(provider, request.headers, body, secret):
            raise WebhookError(401, f"missing or invalid {provider.name} signature")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise WebhookError(400, "the body is not valid JSON") from None
        push = parse_push(provider, request.headers, payload)
        if isinstance(push, Ignored):
            return _answer(200, "ignored", push.reason)
        branch = config.branch()
        if push.branch != branch:
            return _answer(200, "ignored", f"branch {push.branch} is not the watched branch {branch}")
        repositories = await run_in_threadpool(config.repositories)
        repository = match_repository(push, repositories)
        if repository is None:
            return _answer(
                200,
                "ignored",
                f"repository {push.repository_name or push.repository_urls[0]} is not watched by pushtrain",
            )
        started = await run_in_threadpool(config.start, push, repository)
    except WebhookError as refusal:
        log.info("webhook %s: %s (%s)", provider.name, refusal.status, refusal.reason)
        return _answer(refusal.status, "rejected" if refusal.status < 500 else "unavailable", refusal.reason)
    log.info(
        "webhook %s push %s@%s delivery %s: %s (%s)",
        provider.name,
        push.repository_name,
        push.sha[:8],
        push.delivery or "-",
        started.status,
        started.run_id,
    )
    return _answer(
        started.http_status,
        started.status,
        started.reason,
        dag_id=started.dag_id,
        run_id=started.run_id,
        commit=push.sha,
    )
