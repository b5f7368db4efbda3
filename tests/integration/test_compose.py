"""The team deployment (docker-compose.yaml) brought up for real from this checkout, and taken down.

One stack for the module, under a project name, port, data dir, logs, config and .env of its own, so it
never meets a developer's own stack: `make compose-up`'s code path (pushtrain.compose_images.up) builds or
reuses the stand-in images, writes the .env, starts everything and waits until every service is healthy.
The tests then check the REST API, the docker-socket proxy's policy from inside a worker, and that
`make compose-down`'s code path stops every container and keeps the data dir.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from pushtrain import compose_images, demo, settings
from pushtrain.mailsink import MailSink

pytestmark = [pytest.mark.compose, pytest.mark.slow]

PROJECT = "pushtrain-compose-test"
PUSHTRAIN_DAGS = ("train_on_push", "tweak_and_retrain", "container_health")
UP_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack, up and healthy; torn down with its database volume after the module's tests."""
    root = tmp_path_factory.mktemp("compose")
    data_dir = root / "data"
    data_dir.mkdir()
    (data_dir / "kept.txt").write_text("a file of the data dir: compose-down must leave it\n")
    env_file = root / ".env"
    port = _free_port()
    mail_port = _free_port()
    # The watched repository: a bare repo in the data dir, which the workers see at the same path. Pushed
    # before the stack starts: airflow-init then hands the data dir to the workers' uid.
    bare, work = demo.make_model_repo(
        data_dir / "repos", "knn_sklearn.py", {"dataset": "digits", "target": 0.80, "max_attempts": 3}, "knn"
    )
    commit = demo.commit_and_push(work, "a KNN on digits")
    overrides = {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "PUSHTRAIN_COMPOSE_ENV_FILE": str(env_file),
        "PUSHTRAIN_DATA_DIR": str(data_dir),
        "AIRFLOW_API_PORT": str(port),
        "AIRFLOW_LOGS_DIR": str(root / "logs"),
        "AIRFLOW_CONFIG_DIR": str(root / "config"),
        "PYTHONPATH": str(settings.PROJECT_ROOT / "plugins"),
        "AIRFLOW_CONN_GIT_DEFAULT": json.dumps(
            {"conn_type": "git", "host": str(bare), "extra": {"read_only": "true"}}
        ),
        # The host's SMTP sink, through the compose file's host.docker.internal.
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {
                "conn_type": "smtp",
                "host": "host.docker.internal",
                "port": mail_port,
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "pushtrain@localhost"},
            }
        ),
    }
    environment = {**os.environ, **overrides}
    # The data set the model trains on, exported into this data dir as `make datasets` does.
    subprocess.run(
        [sys.executable, "-c", "from pushtrain import datasets; datasets.ensure_dataset('digits')"],
        env=environment,
        check=True,
        timeout=300,
    )
    command = [sys.executable, "-m", "pushtrain.compose_images"]
    started = time.monotonic()
    sink = MailSink(root / "mail", host="0.0.0.0", port=mail_port)
    sink.controller.start()
    try:
        subprocess.run([*command, "up"], env=environment, check=True, timeout=UP_TIMEOUT_S)
        up_seconds = time.monotonic() - started
        print(f"compose stack up and healthy in {up_seconds:.0f}s")
        login = compose_images.read_env_file(env_file)
        yield {
            "environment": environment,
            "command": command,
            "compose": compose_images.compose_command(environment),
            "data_dir": data_dir,
            "url": f"http://127.0.0.1:{port}",
            "username": login["_AIRFLOW_WWW_USER_USERNAME"],
            "password": login["_AIRFLOW_WWW_USER_PASSWORD"],
            "commit": commit,
            "sink": sink,
        }
    finally:
        sink.controller.stop()
        subprocess.run(
            [*compose_images.compose_command(environment), "down", "--volumes", "--remove-orphans"],
            env=environment,
            capture_output=True,
        )


def _api_token(stack) -> str:
    answer = requests.post(
        f"{stack['url']}/auth/token",
        json={"username": stack["username"], "password": stack["password"]},
        timeout=30,
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["access_token"]


def _project_containers(running_only: bool) -> list[str]:
    listed = subprocess.run(
        [
            "docker",
            "ps",
            *([] if running_only else ["-a"]),
            "-q",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_every_service_is_healthy(stack):
    states = compose_images.service_states(stack["environment"])
    assert states.get("airflow-init") == "exited(0)", states
    for service in compose_images.LONG_RUNNING_SERVICES:
        assert states.get(service) == "healthy", f"{service}: {states.get(service)} (all: {states})"


def test_the_pushtrain_dags_are_unpaused_through_the_rest_api(stack):
    headers = {"Authorization": f"Bearer {_api_token(stack)}"}
    deadline = time.monotonic() + 180
    found: dict[str, dict] = {}
    while time.monotonic() < deadline and len(found) < len(PUSHTRAIN_DAGS):
        for dag_id in PUSHTRAIN_DAGS:
            answer = requests.get(f"{stack['url']}/api/v2/dags/{dag_id}", headers=headers, timeout=30)
            if answer.status_code == 200:
                found[dag_id] = answer.json()
        time.sleep(3)
    assert set(found) == set(PUSHTRAIN_DAGS), f"parsed after 180 s: {sorted(found)}"
    errors = requests.get(f"{stack['url']}/api/v2/importErrors", headers=headers, timeout=30).json()
    assert errors["total_entries"] == 0, json.dumps(errors, indent=1)[:3000]
    for dag_id in PUSHTRAIN_DAGS:
        answer = requests.patch(
            f"{stack['url']}/api/v2/dags/{dag_id}", json={"is_paused": False}, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["is_paused"] is False


def test_a_pushed_commit_goes_through_the_whole_loop_on_the_celery_worker(stack):
    """Sensor, detect, training container started through the proxy, evaluate, gate, register, mail."""
    headers = {"Authorization": f"Bearer {_api_token(stack)}"}
    started = time.monotonic()
    answer = requests.post(
        f"{stack['url']}/api/v2/dags/train_on_push/dagRuns",
        json={"logical_date": None, "conf": {"commit": stack["commit"]}},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    deadline = started + 420
    while time.monotonic() < deadline and not stack["sink"].messages():
        time.sleep(3)
    mails = stack["sink"].messages()
    assert mails, "no mail within 420 s: see the task logs under the test's logs dir"
    print(f"push-to-mail on the compose stack: {time.monotonic() - started:.0f}s")
    subject = mails[0]["Subject"]
    assert stack["commit"][:8] in subject and "target met" in subject, subject


# Run inside a worker: what the proxy lets a worker (and so any task code) do with the Docker engine.
PROXY_PROBE = r"""
import json, docker
client = docker.APIClient(base_url="tcp://docker-socket-proxy:2375", version="auto")
outcome = {"version": client.version()["ApiVersion"], "containers": len(client.containers(all=True))}
own = client.containers(filters={"label": "com.docker.compose.service=docker-socket-proxy"})[0]
image = client.inspect_container(own["Id"])["Config"]["Image"]
def status(call):
    try:
        call()
        return "allowed"
    except docker.errors.APIError as error:
        return error.response.status_code
outcome["list volumes"] = status(client.volumes)
outcome["exec"] = status(lambda: client.exec_create(own["Id"], ["true"]))
outcome["privileged create"] = status(lambda: client.create_container(
    image, ["true"], host_config=client.create_host_config(privileged=True)))
outcome["capability create"] = status(lambda: client.create_container(
    image, ["true"], host_config=client.create_host_config(cap_add=["SYS_ADMIN"])))
outcome["socket bind create"] = status(lambda: client.create_container(
    image, ["true"], host_config=client.create_host_config(binds=["/var/run/docker.sock:/s"])))
outcome["pull"] = status(lambda: client.pull("busybox", tag="latest"))
outcome["networks"] = status(client.networks)
outcome["info"] = status(client.info)
print(json.dumps(outcome))
"""


def test_the_socket_proxy_refuses_what_a_worker_must_not_do(stack):
    probe = subprocess.run(
        [*stack["compose"], "exec", "-T", "airflow-worker", "python", "-c", PROXY_PROBE],
        env=stack["environment"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    outcome = json.loads(probe.stdout.strip().splitlines()[-1])
    assert outcome["containers"] >= 1  # what pushtrain needs still passes
    refused = {what: code for what, code in outcome.items() if what not in ("version", "containers")}
    assert refused == dict.fromkeys(refused, 403), outcome


def test_compose_down_stops_everything_and_keeps_the_data_dir(stack):
    subprocess.run([*stack["command"], "down"], env=stack["environment"], check=True, timeout=300)
    assert _project_containers(running_only=True) == []
    assert (stack["data_dir"] / "kept.txt").exists()
