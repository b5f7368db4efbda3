"""Serving in real containers: a KNN trained on digits in the real scikit-learn image, registered, served
behind its stable endpoint; every payload form of MLflow's scoring protocol, bad requests answered 4xx
with the server alive, a blue-green switch under 50 requests/s without one failed request, a candidate
that fails its smoke test never taking traffic, and a killed serving container coming back."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pushtrain import images, localrun, serving
from pushtrain.registry import ModelRegistry
from pushtrain.runner import contract

MODEL = "digits-knn"
STRONG_KNN = {"n_neighbors": 3, "weights": "distance", "p": 2}
TEMPLATE = Path(__file__).resolve().parents[2] / "include" / "model_templates" / "knn_sklearn.py"


def lineage() -> dict:
    return {"commit": "0123abcd" * 5, "dataset": {"name": "digits", "split_version": "v1"}}


@pytest.fixture(scope="module")
def served(digits, docker, tmp_path_factory):
    images.ensure_all_images(("sklearn",))  # the one image these tests serve from
    root = tmp_path_factory.mktemp("serving")
    data = root / "data"
    data.mkdir()
    (data / "datasets").symlink_to(Path(digits.root).parents[1])
    patch = pytest.MonkeyPatch()
    patch.setenv("PUSHTRAIN_DATA_DIR", str(data))
    patch.setenv("PUSHTRAIN_SERVING_FIRST_PORT", "18501")
    result = localrun.train(
        model=TEMPLATE,
        data=digits.train_dir,
        out=root / "attempt",
        hparams=STRONG_KNN,
        kind="knn",
        name=f"pushtrain-test-serving-{root.name}",
    )
    assert result.succeeded, result.summary()
    registry = ModelRegistry(data / "registry")
    artifact = root / "attempt" / contract.MODEL_DIR
    first = registry.register(MODEL, artifact, {"accuracy": 0.97}, lineage(), pipeline_run_id="run-1")
    registry.promote_if_not_worse(MODEL, first)
    deployed = serving.deploy(MODEL, by="user:test")
    try:
        yield {
            "registry": registry,
            "artifact": artifact,
            "root": root,
            "deployed": deployed,
            "port": serving.endpoint(MODEL).port,
            "digits": digits,
        }
    finally:
        serving.undeploy(MODEL, docker)
        patch.undo()


def png_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def held_out(digits, count: int = 6) -> list[tuple[Path, str]]:
    files = sorted(digits.test_dir.glob("*/*.png"))[::37][:count]
    return [(path, path.parent.name) for path in files]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def test_the_champion_is_served_and_answers_every_payload_form(served) -> None:
    assert served["deployed"].switched and "smoke test passed" in served["deployed"].reason
    port, examples = served["port"], held_out(served["digits"])
    truth = [label for _, label in examples]
    assert serving.request(port, "GET", "/ping") == (200, {"status": "ok"})
    status, version = serving.request(port, "GET", "/version")
    assert status == 200 and version["name"] == MODEL and version["version"] == 1
    assert version["uri"] == f"models:/{MODEL}/1" and version["commit"] == "0123abcd" * 5

    grids = [pixels(path).tolist() for path, _ in examples]
    forms = {
        "instances of 8x8 grids": {"instances": grids},
        "instances of flat rows": {"instances": [np.ravel(g).tolist() for g in grids]},
        "instances of 8x8x1 arrays": {"instances": [np.asarray(g)[..., None].tolist() for g in grids]},
        "instances of base64 PNGs": {"instances": [png_of(path) for path, _ in examples]},
        "instances of b64 objects": {"instances": [{"b64": png_of(path)} for path, _ in examples]},
        "inputs": {"inputs": grids},
        "named inputs": {"inputs": {"image": grids}},
        "dataframe_split": {
            "dataframe_split": {
                "columns": [f"p{i}" for i in range(64)],
                "data": [np.ravel(g).tolist() for g in grids],
            }
        },
    }
    for form, body in forms.items():
        status, answer = serving.request(port, "POST", "/invocations", body)
        assert status == 200, (form, answer)
        assert answer["predictions"] == truth, form
        assert answer["class_names"] == [str(i) for i in range(10)]
        assert all(abs(sum(row) - 1) < 1e-4 for row in answer["probabilities"]), form

    # A bigger JPEG in colour is converted and resized to the model's 8x8 grey input.
    with Image.open(examples[0][0]) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize((64, 64)).save(buffer, format="JPEG", quality=95)
    status, answer = serving.request(
        port, "POST", "/invocations", {"instances": [base64.b64encode(buffer.getvalue()).decode()]}
    )
    assert status == 200 and answer["predictions"] == [examples[0][1]]


def raw_exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(65536)
        header, _, rest = received.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(rest) < length:
            rest += connection.recv(65536)
    return int(header.split()[1]), json.loads(rest[:length])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"instances": [[0.5] * 63]}, 400, "has shape [63]; this model takes [8, 8, 1] or [8, 8] or [64]"),
        ({"instances": [["a"] * 64]}, 400, "non-numbers"),
        ({"instances": [[True] * 64]}, 400, "booleans"),
        ({"instances": [[255.0] * 64]}, 400, "pixels outside [0, 1]"),
        ({"instances": [[[0.1, 0.2], [0.3]]]}, 400, "not a rectangular array"),
        (
            {"instances": [base64.b64encode(b"just some text, not a picture").decode()]},
            400,
            "not a readable PNG",
        ),
        ({"instances": ["%%% not base64 %%%"]}, 400, "not base64"),
        ({"instances": []}, 400, "holds no inputs"),
        ({"instances": [[0.5] * 64] * 257}, 413, "the limit is 256"),
        ({"instances": [[0.5] * 64], "inputs": [[0.5] * 64]}, 400, "send exactly one of"),
        ({"rows": [[0.5] * 64]}, 400, "send exactly one of"),
        ([[0.5] * 64], 400, "must be a JSON object"),
        ({"dataframe_split": {"columns": ["a"]}}, 400, "dataframe_split must be"),
    ],
    ids=[
        "wrong-shape",
        "strings",
        "booleans",
        "0-255-pixels",
        "ragged",
        "non-image",
        "not-base64",
        "empty",
        "batch-over-limit",
        "two-keys",
        "no-key",
        "a-list",
        "split-without-data",
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_lives_on(served, body, status, message) -> None:
    for port in (served["port"], serving.upstream(MODEL)["port"]):  # the stable endpoint and the container
        answered, answer = serving.request(port, "POST", "/invocations", body)
        assert answered == status and message in answer["message"], answer
    assert serving.request(served["port"], "GET", "/health")[0] == 200


def test_transport_level_bad_requests(served) -> None:
    port = served["port"]
    huge = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    for target in (port, serving.upstream(MODEL)["port"]):
        status, answer = raw_exchange(target, huge, b'{"instances": [')
        assert status == 413 and "104857600 bytes; the limit is" in answer["message"]
    status, answer = raw_exchange(
        port,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 3\r\n\r\n",
        b"1,2",
    )
    assert status == 415 and "send application/json" in answer["message"]
    status, answer = raw_exchange(
        port,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nContent-Length: 9\r\n\r\n",
        b"{not json",
    )
    assert status == 400 and "not JSON" in answer["message"]
    assert serving.request(port, "GET", "/nowhere")[0] == 404
    assert serving.request(port, "GET", "/health")[0] == 200


def test_a_batch_with_one_bad_input_names_that_input(served) -> None:
    """A batch converted in one step when every input is good still names the bad one when one is not."""
    good = [0.5] * 64
    cases = [
        ({"instances": [good, good, [255.0] * 64]}, "input 2 has pixels outside [0, 1]"),
        ({"instances": [good, [True] * 64]}, "input 1 holds booleans"),
        ({"instances": [good, [0.5] * 63]}, "input 1 has shape [63]"),
        ({"instances": [good, [[0.5] * 8] * 8, "not base64 %%%"]}, "input 2 is a string but not base64"),
    ]
    for port in (served["port"], serving.upstream(MODEL)["port"]):
        for body, message in cases:
            status, answer = serving.request(port, "POST", "/invocations", body)
            assert status == 400 and message in answer["message"], (body, answer)
        status, answer = serving.request(port, "POST", "/invocations", {"instances": [good, [[0.5] * 8] * 8]})
        assert status == 200 and len(answer["predictions"]) == 2


def test_keep_alive_requests_do_not_wait_for_delayed_acks(served) -> None:
    """Small requests on one kept connection answer in milliseconds, not the 40 ms of a Nagle stall."""
    body = json.dumps({"instances": [[0.5] * 64]}).encode()
    for port in (served["port"], serving.upstream(MODEL)["port"]):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seconds = []
        for _ in range(25):
            started = time.perf_counter()
            connection.request(
                "POST", "/invocations", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
            seconds.append(time.perf_counter() - started)
        connection.close()
        assert sorted(seconds)[len(seconds) // 2] < 0.025, seconds


def test_expect_100_continue_is_answered_at_once(served) -> None:
    body = json.dumps({"instances": [[0.5] * 64]}).encode()
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    for port in (served["port"], serving.upstream(MODEL)["port"]):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(head)
            interim = connection.recv(65536)  # within the timeout, before any body is sent
            assert interim.startswith(b"HTTP/1.1 100"), interim
            connection.sendall(body)
            received = b""
            while b"predictions" not in received:
                chunk = connection.recv(65536)
                assert chunk, received
                received += chunk
        assert b"HTTP/1.1 200" in received


class Load:
    """Constant load on the stable endpoint: one request every 1/rate s, each answer checked."""

    def __init__(self, port: int, rate: float, body: dict) -> None:
        self.port, self.interval, self.body = port, 1.0 / rate, body
        self.failures: list[str] = []
        self.versions: list[int] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                status, answer = serving.request(self.port, "POST", "/invocations", self.body, timeout=10)
                if status != 200:
                    self.failures.append(f"{status}: {answer}")
            except OSError as error:
                self.failures.append(repr(error))
            self.sent += 1
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_blue_green_switch_under_load_fails_no_request_and_a_bad_candidate_never_takes_traffic(
    served, docker
) -> None:
    registry, port = served["registry"], served["port"]
    second = registry.register(
        MODEL, served["artifact"], {"accuracy": 0.97}, lineage(), pipeline_run_id="run-2"
    )
    assert registry.promote_if_not_worse(MODEL, second).moved  # a tie promotes
    example, label = held_out(served["digits"], 1)[0]
    body = {"instances": [png_of(example)]}

    with Load(port, 50, body) as load:
        time.sleep(1)
        result = serving.deploy(MODEL, by="user:test")
        time.sleep(1)
    assert result.switched, result.reason
    assert load.sent >= 50 and load.failures == [], load.failures[:3]
    assert serving.request(port, "GET", "/version")[1]["version"] == 2
    ours = docker.containers(filters={"label": f"{serving.MODEL_LABEL}={MODEL}"})
    names = {c["Names"][0].lstrip("/") for c in ours}
    assert names == {serving.container_name(MODEL, 2), serving.proxy_name(MODEL)}

    # A candidate whose class names are scrambled answers, but wrongly: its smoke test fails.
    scrambled = served["root"] / "scrambled"
    shutil.copytree(served["artifact"], scrambled)
    signature = json.loads((scrambled / "signature.json").read_text())
    signature["class_names"] = signature["class_names"][::-1]
    (scrambled / "signature.json").write_text(json.dumps(signature))
    third = registry.register(MODEL, scrambled, {"accuracy": 0.98}, lineage(), pipeline_run_id="run-3")
    assert registry.promote_if_not_worse(MODEL, third).moved

    with Load(port, 50, body) as load:
        refused = serving.deploy(MODEL, by="user:test")
    assert not refused.switched and "smoke test failed" in refused.reason
    assert load.failures == [] and serving.request(port, "GET", "/version")[1]["version"] == 2
    last = registry.history(MODEL)[-1]
    assert (last.alias, last.from_version, last.to_version) == ("serving", 2, 2)
    assert "refused v3: v3 never took traffic: smoke test failed" in last.reason
    assert not docker.containers(all=True, filters={"name": serving.container_name(MODEL, 3)})
    status, answer = serving.request(port, "POST", "/invocations", body)
    assert status == 200 and answer["predictions"] == [label]


def test_a_killed_serving_container_comes_back(served, docker) -> None:
    port = served["port"]
    name = serving.upstream(MODEL)["container"]
    docker.kill(name)
    deadline = time.monotonic() + 60
    actions = []
    while time.monotonic() < deadline:
        actions += serving.heal(docker, log_line=lambda line: None)
        try:
            if serving.request(port, "GET", "/health", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    assert serving.request(port, "GET", "/health")[0] == 200
    assert docker.inspect_container(name)["State"]["Running"]
