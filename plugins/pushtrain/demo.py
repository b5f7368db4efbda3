"""``make demo``: the whole product on one machine, from a git push to a registered model and a mail.

1. Makes a local model repository (a bare repo as the "remote" and a working clone) from the CNN template,
   with its weak defaults: well below 80% on MNIST-5k.
2. Starts a local SMTP sink that saves each mail under ``data/demo/mail/``.
3. Starts Airflow standalone (SQLite, ``airflow_home/`` in the project), prints the login, unpauses the DAGs,
   and prints the webhook's URL and secret with a ``curl`` line that sends a signed push event.
4. Pushes the commit and delivers the push event to the webhook, as a git host would (without it, the git
   sensor notices the commit within 30 s); the pipeline trains, evaluates, tweaks and retrains until the
   target is met; the model is registered and the mail sent.
5. Prints a summary and keeps Airflow up for you to look around; Ctrl-C stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pushtrain import datasets, pipeline, settings
from pushtrain.mailsink import MailSink, read_mails
from pushtrain.standalone import EmbeddedAirflow
from pushtrain.ui.webhook import SECRET_ENV, deliver_push

DAG_IDS = ["train_on_push", "tweak_and_retrain", "container_health", "deploy_model", "approve_model"]
AUTHOR = ("Dana Scientist", "dana@example.com")


def git(*args: str, cwd: Path, date: str | None = None) -> str:
    dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {}
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": AUTHOR[0],
            "GIT_AUTHOR_EMAIL": AUTHOR[1],
            "GIT_COMMITTER_NAME": AUTHOR[0],
            "GIT_COMMITTER_EMAIL": AUTHOR[1],
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(cwd),
            **dates,
        },
    ).stdout.strip()


def make_model_repo(
    root: Path, template: str = "cnn_keras.py", config: dict | None = None, name: str = "model-repo"
) -> tuple[Path, Path]:
    """A bare "remote" and a working clone holding the template as model.py and a pushtrain.toml."""
    bare, work = root / f"{name}.git", root / name
    for path in (bare, work):
        shutil.rmtree(path, ignore_errors=True)
    bare.mkdir(parents=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", cwd=bare)
    work.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    git("remote", "add", "origin", str(bare), cwd=work)
    shutil.copyfile(settings.PROJECT_ROOT / "include" / "model_templates" / template, work / "model.py")
    lines = [f"{key} = {json.dumps(value)}" for key, value in (config or {}).items()]
    (work / pipeline.CONFIG_FILE).write_text("[pushtrain]\n" + "\n".join(lines) + "\n")
    return bare, work


def commit(work: Path, message: str, date: str | None = None) -> str:
    """Commit everything in the working clone (``date``: ISO 8601, for history made after the fact)."""
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", message, cwd=work, date=date)
    return git("rev-parse", "HEAD", cwd=work)


def commit_and_push(work: Path, message: str) -> str:
    commit(work, message)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def wait_for_pipeline(commit: str, timeout: float, report=print) -> pipeline.Summary:
    """Follow the pipeline of ``commit`` through its attempt records until it ends; return its summary."""
    deadline, seen = time.monotonic() + timeout, set()
    while time.monotonic() < deadline:
        for folder in sorted(settings.runs_dir().glob(f"{commit[:8]}-*")):
            for record in pipeline.attempt_records(folder.name):
                if (folder.name, record.attempt) not in seen:
                    seen.add((folder.name, record.attempt))
                    result = (
                        f"failed: {record.reason}"
                        if record.accuracy is None
                        else f"held-out accuracy {record.accuracy:.4f}"
                    )
                    report(f"[demo] attempt {record.attempt}: {result} (hparams {record.hparams})")
            summary = pipeline.Summary.load(folder.name)
            if summary is not None:
                return summary
        time.sleep(3)
    raise TimeoutError(f"the pipeline for {commit[:8]} did not end within {timeout:.0f}s")


def webhook_curl(url: str, secret: str, bare: Path, work: Path) -> str:
    """A shell command that sends the working clone's head as a signed push event (what a git host sends)."""
    head = "'\"$(git -C " + str(work) + " rev-parse HEAD)\"'"
    body = '\'{"repository": "' + str(bare) + '", "ref": "refs/heads/main", "after": "' + head + "\"}'"
    signature = (
        "sha256=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hmac '" + secret + "' | sed 's/^.* //')"
    )
    return (
        f"BODY={body}; curl -s -X POST {url} -H 'Content-Type: application/json' "
        f'-H "X-Hub-Signature-256: {signature}" -d "$BODY"'
    )


def served_curl(model_name: str, timeout: float) -> str:
    """Once deploy_model serves the champion: a ``curl`` line that classifies one held-out image."""
    from pushtrain import serving
    from pushtrain.registry import ModelRegistry

    deadline = time.monotonic() + timeout
    champion = ModelRegistry(settings.registry_dir()).champion(model_name)
    while time.monotonic() < deadline:
        served, stable = serving.upstream(model_name), serving.endpoint(model_name)
        if champion and served and stable and served.get("version") == champion.number:
            break
        time.sleep(2)
    else:
        return f"[demo] {model_name} is not served yet: see the deploy_model DAG's runs"
    dataset = champion.lineage.get("dataset") or {}
    test_dir = settings.datasets_dir() / dataset.get("name", "") / dataset.get("split_version", "") / "test"
    image = next(iter(sorted(test_dir.glob("*/*.png"))), None)
    return (
        f"[demo] {champion.uri} is served at {stable.url}/invocations; classify a held-out "
        f"{image.parent.name if image else ''}:\n  curl -s {stable.url}/invocations -H 'Content-Type: "
        f"application/json' -d '{{\"instances\": [\"'$(base64 -w0 {image})'\"]}}'"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--smtp-port", type=int, default=8025)
    parser.add_argument("--exit-when-done", action="store_true", help="stop everything once the model is in")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    demo_dir = settings.data_dir() / "demo"
    mail_dir = demo_dir / "mail"
    shutil.rmtree(mail_dir, ignore_errors=True)
    datasets.ensure_dataset("mnist5k")
    bare, work = make_model_repo(demo_dir, config={"dataset": "mnist5k", "target": 0.80, "max_attempts": 6})
    webhook_secret = secrets.token_hex(20)
    airflow = EmbeddedAirflow(
        home=settings.PROJECT_ROOT / "airflow_home",
        data_dir=settings.data_dir(),
        repo_url=str(bare),
        smtp_port=args.smtp_port,
        port=args.port,
        extra_env={SECRET_ENV: webhook_secret},
    )
    hook_url = f"{airflow.url}/pushtrain/hooks/git"
    started = time.monotonic()
    with MailSink(mail_dir, port=args.smtp_port):
        print(f"[demo] SMTP sink on 127.0.0.1:{args.smtp_port}, mail saved in {mail_dir}", flush=True)
        log = settings.PROJECT_ROOT / "airflow_home" / "standalone.log"
        airflow.home.mkdir(parents=True, exist_ok=True)
        print(f"[demo] starting Airflow standalone (log: {log}) ...", flush=True)
        airflow.start(log)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
        try:
            airflow.wait_until_healthy()
            airflow.wait_for_dags(DAG_IDS)
            airflow.unpause(*DAG_IDS)
            print(f"[demo] Airflow UI: {airflow.url}  login: admin / {airflow.admin_password()}", flush=True)
            print(
                f"[demo] pipelines: {airflow.url}/pushtrain/pipelines (also under Browse in the UI)",
                flush=True,
            )
            print(f"[demo] webhook: POST {hook_url}  secret: {webhook_secret}", flush=True)
            print(
                f"[demo] simulate a push event:\n  {webhook_curl(hook_url, webhook_secret, bare, work)}",
                flush=True,
            )
            commit = commit_and_push(work, "Weak CNN: one epoch, two filters")
            pushed_at = time.monotonic()
            status, answer = deliver_push(hook_url, webhook_secret, str(bare), commit)
            print(
                f"[demo] pushed {commit[:8]} to {bare}; webhook: {status} {answer.get('status')} "
                f"({answer.get('reason')})",
                flush=True,
            )
            if status != 202:
                print("[demo] the git sensor picks the commit up within 30 s", flush=True)
            summary = wait_for_pipeline(commit, args.timeout, report=lambda line: print(line, flush=True))
            push_to_mail = time.monotonic() - pushed_at
            mails = sorted(mail_dir.glob("*.eml"))
            records = pipeline.attempt_records(summary.pipeline_id)
            best = pipeline.best_record(records)
            print("\n[demo] ===== summary =====")
            print(f"[demo] outcome: {summary.outcome} ({summary.reason})")
            if best:
                print(f"[demo] attempts: {len(records)}; best held-out accuracy {best.accuracy:.4f}")
            else:
                print(f"[demo] no attempt was evaluated: see the failed task's log in the UI ({airflow.url})")
            print(f"[demo] registry: {settings.registry_dir()}")
            if summary.outcome == "met":
                print(
                    served_curl(pipeline.Pipeline.load(summary.pipeline_id).model_name, timeout=600),
                    flush=True,
                )
            print(
                f"[demo] mail: {mails[-1] if mails else 'none yet'} "
                f"(subject: {read_mails(mail_dir)[-1]['subject'] if mails else '-'})"
            )
            print(f"[demo] push to summary: {push_to_mail:.0f}s; total {time.monotonic() - started:.0f}s")
            if not args.exit_when_done:
                print(f"[demo] Airflow keeps running at {airflow.url}; Ctrl-C stops everything.", flush=True)
                signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            print("[demo] stopping Airflow and the SMTP sink ...", flush=True)
            airflow.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
