"""Answer predictions over HTTP with MLflow's scoring protocol, and the stable endpoint's tiny proxy.

``python -m pushtrain.runner serve --model-dir /model`` loads a registered version's ``artifact/`` once and
serves, on port 8080 inside its sandboxed container:

* ``POST /invocations`` with a JSON object holding exactly one of ``instances`` (a list of inputs),
  ``inputs`` (a list, or ``{"<name>": list}``), ``dataframe_split`` (``{"columns": [...], "data": [[...]]}``)
  or ``dataframe_records`` (a list of ``{"<column>": value}``). An image input is an array of pixels in
  [0, 1] (``(height, width, channels)``, ``(height, width)`` for grey, or flat), or a base64 PNG/JPEG
  string (also as ``{"b64": "..."}`` or a ``data:`` URL), decoded and resized to the model's input. A table
  input is one row of features. Answer: ``{"predictions": [<class name>, ...], "class_names": [...],
  "probabilities": [[p_0, ...], ...]}`` (``probabilities`` only when the model gives them).
* ``GET /ping`` and ``GET /health``: 200 once the model is loaded and has answered a warm-up prediction.
* ``GET /version``: name, version, alias, commit, data set hash, as the platform passed them in ``--info``.

A bad request (not JSON, no or two payload keys, a wrong shape or dtype, pixels outside [0, 1], a string that
is no image, a body over ``--max-body-bytes``, a batch over ``--max-batch``) is answered 4xx with
``{"error_code": ..., "message": ...}``: the message says what to send instead. The server never dies of
a request: each runs in its own thread and every failure is answered.

``python -m pushtrain.runner proxy`` is the stable endpoint the platform hands out (blue-green): it listens
on a fixed loopback port and forwards every request to the serving container named in ``--upstream-file``
(``{"host", "port", "container", "version"}``), re-read whenever the file changes. The platform switches
traffic by replacing that file atomically; requests in flight finish on the old container. It runs no
user code.

Standard library HTTP (``http.server``): one process, a thread per connection, HTTP/1.1 keep-alive. It
imports nothing of Airflow.
"""

from __future__ import annotations

import base64
import binascii
import gc
import http.client
import io
import json
import math
import signal
import socket
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

CONTAINER_PORT = 8080
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
PAYLOAD_KEYS = ("instances", "inputs", "dataframe_split", "dataframe_records")
MAX_IMAGE_PIXELS = 4096 * 4096  # a decoded image larger than this is refused (a decompression bomb)
SOCKET_TIMEOUT_S = 30.0  # a client that stops sending mid-request frees its thread after this
UPSTREAM_TIMEOUT_S = 60.0
RESPONSE_BUFFER_BYTES = 64 * 1024  # one write for a response up to this size
JSON_TYPE = "application/json"


class BadRequest(Exception):
    """A request the server cannot answer with predictions; ``status`` is the 4xx to send."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def _bad(message: str) -> BadRequest:
    return BadRequest(400, "BAD_REQUEST", message)


# --- the model --------------------------------------------------------------------------------------------


class LoadedModel:
    """A registered version's model, loaded once; ``predict`` is safe to call from many threads."""

    def __init__(self, model_dir: Path, model_file: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        signature = json.loads((self.model_dir / "signature.json").read_text())
        self.class_names: list[str] = [str(name) for name in signature["class_names"]]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in signature["input_shape"])
        self.is_image = len(self.input_shape) == 3
        self._lock = threading.Lock()
        artifact = self.model_dir / signature["file"]
        if signature["format"] == "keras":
            self._predict = self._keras(artifact, model_file)
        else:
            self._predict = self._estimator(artifact, model_file)
        self.predict(np.zeros((1, *self.input_shape), dtype=np.float32))  # warm up: the first call traces

    @staticmethod
    def _keras(artifact: Path, model_file: Path | None):
        import keras

        from pushtrain.runner.usercode import load_model_file

        try:
            model = keras.models.load_model(artifact)
        except (TypeError, ValueError):  # custom layers: the user's file defines them
            classes = {
                k: v for k, v in vars(load_model_file(model_file).module).items() if isinstance(v, type)
            }
            model = keras.models.load_model(artifact, custom_objects=classes)

        def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            # Calling the model skips predict()'s per-call set-up, which dominates small batches.
            probabilities = np.asarray(model(batch, training=False))
            return probabilities.argmax(axis=1), probabilities

        return predict

    @staticmethod
    def _estimator(artifact: Path, model_file: Path | None):
        import joblib

        from pushtrain.runner.usercode import load_model_file

        try:
            estimator = joblib.load(artifact)
        except (AttributeError, ModuleNotFoundError):  # a class of the user's file: import it first
            load_model_file(model_file)
            estimator = joblib.load(artifact)
        has_probabilities = hasattr(estimator, "predict_proba")

        def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            flat = batch.reshape(len(batch), -1)
            if has_probabilities:
                probabilities = np.asarray(estimator.predict_proba(flat))
                return probabilities.argmax(axis=1), probabilities
            return np.asarray(estimator.predict(flat)), None

        return predict

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class indices and, when the model gives them, probabilities for a float32 batch."""
        with self._lock:
            indices, probabilities = self._predict(batch)
        return np.asarray(indices).astype(np.int64).reshape(-1), probabilities

    def answer(self, batch: np.ndarray) -> dict[str, Any]:
        indices, probabilities = self.predict(batch)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self.class_names)):
            raise ValueError(f"the model predicted class indices outside 0..{len(self.class_names) - 1}")
        document: dict[str, Any] = {
            "predictions": [self.class_names[i] for i in indices.tolist()],
            "class_names": self.class_names,
        }
        if probabilities is not None and probabilities.shape == (len(batch), len(self.class_names)):
            document["probabilities"] = np.round(probabilities.astype(np.float64), 6).tolist()
        return document


# --- requests -> a batch ----------------------------------------------------------------------------------


def payload_items(document: Any) -> list[Any]:
    """The inputs of one scoring request, one per row, in the order sent."""
    if not isinstance(document, dict):
        raise _bad(f"the body must be a JSON object with one of {', '.join(PAYLOAD_KEYS)}")
    present = [key for key in PAYLOAD_KEYS if key in document]
    if len(present) != 1:
        found = ", ".join(present) or ", ".join(sorted(map(str, document))) or "nothing"
        raise _bad(f"send exactly one of {', '.join(PAYLOAD_KEYS)} (found: {found})")
    key = present[0]
    value = document[key]
    if key == "inputs" and isinstance(value, dict):
        if len(value) != 1:
            raise _bad(f"inputs as an object must hold one named input, got {len(value)}")
        value = next(iter(value.values()))
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise _bad('dataframe_split must be {"columns": [...], "data": [[...], ...]}')
        value = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in value["data"]]
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(record, dict) for record in value):
            raise _bad("dataframe_records must be a list of objects")
        value = [next(iter(r.values())) if len(r) == 1 else list(r.values()) for r in value]
    if not isinstance(value, list):
        raise _bad(f"{key} must be a list of inputs, got {type(value).__name__}")
    return value


def to_batch(
    items: list[Any],
    input_shape: tuple[int, ...],
    is_image: bool,
    max_batch: int,
    *,
    may_hold_booleans: bool = True,
) -> np.ndarray:
    """A float32 batch of ``input_shape`` rows; raises :class:`BadRequest` saying what is wrong and where.

    ``may_hold_booleans=False`` (the body has no JSON ``true``/``false``) allows converting a batch of
    well-formed numeric inputs in one step; anything else goes input by input, for the message.
    """
    if not items:
        raise _bad("the request holds no inputs")
    if len(items) > max_batch:
        raise BadRequest(
            413,
            "BATCH_TOO_LARGE",
            f"{len(items)} inputs in one request; the limit is {max_batch}: split the batch",
        )
    if not may_hold_booleans:
        stacked = _stacked_numeric(items, input_shape, is_image)
        if stacked is not None:
            return stacked
    batch = np.empty((len(items), *input_shape), dtype=np.float32)
    for position, item in enumerate(items):
        if isinstance(item, dict) and set(item) == {"b64"}:
            item = item["b64"]
        if isinstance(item, str):
            if not is_image:
                raise _bad(
                    f"input {position} is a string, but this model takes rows of {input_shape[0]} numbers"
                )
            batch[position] = decode_image(item, input_shape, position)
        else:
            batch[position] = _numeric(item, input_shape, is_image, position)
    return batch


def _stacked_numeric(items: list[Any], input_shape: tuple[int, ...], is_image: bool) -> np.ndarray | None:
    """The whole batch in one conversion when every input is valid, else None (checked input by input).

    One ``np.asarray`` of the batch costs a fraction of one per input, which dominates a batch of small
    inputs. It accepts exactly what :func:`_numeric` accepts input by input, booleans aside (numpy would
    turn a row of booleans among numbers into numbers): the caller rules those out.
    """
    try:
        array = np.asarray(items)
    except (ValueError, TypeError, RecursionError):  # ragged, or inputs of different shapes
        return None
    if array.dtype.kind not in "iuf" or array.ndim < 2:
        return None
    expected = math.prod(input_shape)
    shapes = {input_shape, (expected,)} | ({input_shape[:2]} if is_image and input_shape[2] == 1 else set())
    if array.shape[1:] not in shapes:
        return None
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        return None
    if is_image and (array.min() < 0.0 or array.max() > 1.0):
        return None
    return array.reshape(len(items), *input_shape)


def _numeric(item: Any, input_shape: tuple[int, ...], is_image: bool, position: int) -> np.ndarray:
    try:
        array = np.asarray(item)
    except ValueError:  # ragged nesting
        raise _bad(f"input {position} is not a rectangular array of numbers") from None
    if array.dtype.kind not in "iuf":
        raise _bad(
            f"input {position} holds {array.dtype.kind == 'b' and 'booleans' or 'non-numbers'} "
            f"(dtype {array.dtype}); send numbers" + (" or a base64 PNG/JPEG" if is_image else "")
        )
    expected = math.prod(input_shape)
    shapes = {input_shape, (expected,)} | ({input_shape[:2]} if is_image and input_shape[2] == 1 else set())
    if array.shape not in shapes:
        wanted = " or ".join(str(list(shape)) for shape in sorted(shapes, key=len, reverse=True))
        raise _bad(f"input {position} has shape {list(array.shape)}; this model takes {wanted}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise _bad(f"input {position} holds NaN or infinity")
    if is_image and (array.min() < 0.0 or array.max() > 1.0):
        raise _bad(
            f"input {position} has pixels outside [0, 1] (from {array.min():g} to {array.max():g}); "
            "divide 0-255 pixels by 255"
        )
    return array.reshape(input_shape)


def decode_image(text: str, input_shape: tuple[int, ...], position: int) -> np.ndarray:
    """A base64 PNG/JPEG (or ``data:`` URL) as pixels in [0, 1], converted and resized to ``input_shape``."""
    from PIL import Image

    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(
            f"input {position} is a string but not base64; send a base64 PNG/JPEG or an array of pixels"
        ) from None
    height, width, channels = input_shape
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise _bad(f"input {position} is a {image.format} image; send PNG or JPEG")
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise _bad(
                        f"input {position} is {image.width}x{image.height} pixels, over the "
                        f"{MAX_IMAGE_PIXELS} limit"
                    )
                converted = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except BadRequest:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning, SyntaxError):
        raise _bad(f"input {position} is not a readable PNG or JPEG image") from None
    return pixels.reshape(input_shape)


# --- HTTP -------------------------------------------------------------------------------------------------


class _FastHandler(BaseHTTPRequestHandler):
    """Keep-alive without the 40 ms stalls of Nagle's algorithm meeting the client's delayed ACK.

    With Nagle on, a response written as headers then body leaves the body waiting until the client ACKs
    the headers, which a keep-alive client delays by up to 40 ms: the whole cost of a small request. So
    the socket sends at once (TCP_NODELAY) and the response is buffered, leaving in one write when
    ``handle_one_request`` flushes it (a body over the buffer goes straight after, unheld).
    """

    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    timeout = SOCKET_TIMEOUT_S
    disable_nagle_algorithm = True
    wbufsize = RESPONSE_BUFFER_BYTES

    def handle_expect_100(self) -> bool:
        answered = super().handle_expect_100()
        self.wfile.flush()  # "100 Continue" must leave now: the client sends its body only after it
        return answered


class _Handler(_FastHandler):
    server: ScoringServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one line per request would cost more than the prediction of a small model

    def _send(self, status: int, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: BadRequest) -> None:
        self._send(error.status, {"error_code": error.error_code, "message": str(error)})

    def do_GET(self) -> None:
        if self.path in ("/ping", "/health"):
            self._send(200, {"status": "ok"})
        elif self.path == "/version":
            self._send(200, self.server.info)
        else:
            self._error(
                BadRequest(
                    404, "NOT_FOUND", f"no {self.path}; use POST /invocations, GET /ping, /health or /version"
                )
            )

    def do_POST(self) -> None:
        try:
            if self.path != "/invocations":
                raise BadRequest(404, "NOT_FOUND", f"no POST {self.path}; use POST /invocations")
            body = read_body(self, self.server.max_body_bytes)
            document = json.loads(body)
            model = self.server.model
            batch = to_batch(
                payload_items(document),
                model.input_shape,
                model.is_image,
                self.server.max_batch,
                may_hold_booleans=b"true" in body or b"false" in body,
            )
        except BadRequest as error:
            self._error(error)
            return
        except (ValueError, RecursionError) as error:  # json.loads: not JSON or not UTF-8
            self._error(_bad(f"the body is not JSON: {error}"))
            return
        try:
            answer = self.server.model.answer(batch)
        except Exception as error:  # the model's own failure on valid input: said, and the server lives on
            self._send(500, {"error_code": "MODEL_ERROR", "message": f"the model failed: {error!r}"})
            return
        self._send(200, answer)


def read_body(handler: BaseHTTPRequestHandler, max_body_bytes: int) -> bytes:
    """The request body, refused before it is read when it is not JSON or larger than the limit."""
    content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise BadRequest(
            415, "UNSUPPORTED_MEDIA_TYPE", f"Content-Type {content_type or 'missing'}; send {JSON_TYPE}"
        )
    length_header = handler.headers.get("Content-Length")
    if length_header is None or not length_header.isdigit():
        handler.close_connection = True
        raise BadRequest(411, "LENGTH_REQUIRED", "send a Content-Length header")
    length = int(length_header)
    if length > max_body_bytes:
        handler.close_connection = True  # the unread body must not be parsed as the next request
        raise BadRequest(
            413,
            "PAYLOAD_TOO_LARGE",
            f"the body is {length} bytes; the limit is {max_body_bytes}: "
            "send smaller batches or smaller images",
        )
    return handler.rfile.read(length)


class ScoringServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        model: LoadedModel,
        info: dict[str, Any],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(address, _Handler)
        self.model, self.info = model, info
        self.max_batch, self.max_body_bytes = max_batch, max_body_bytes


# --- the stable endpoint ----------------------------------------------------------------------------------


class _Upstream:
    """The serving container the proxy forwards to, re-read when ``upstream.json`` changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._target: tuple[str, int] | None = None
        self._lock = threading.Lock()

    def target(self) -> tuple[str, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_ino)  # a replace gives a new inode even within one mtime tick
        with self._lock:
            if stamp != self._stamp:
                try:
                    document = json.loads(self.path.read_text())
                    self._target = (str(document["host"]), int(document["port"]))
                    self._stamp = stamp
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # keep the last good target
            return self._target


class _ProxyHandler(_FastHandler):
    server: ProxyServer
    _connections = threading.local()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _reply(self, status: int, body: bytes, content_type: str = JSON_TYPE) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, method: str) -> None:
        body = b""
        if method == "POST":
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._reply(
                    411,
                    json.dumps(
                        {"error_code": "LENGTH_REQUIRED", "message": "send a Content-Length header"}
                    ).encode(),
                )
                return
            if int(length) > self.server.max_body_bytes:
                self.close_connection = True
                self._reply(
                    413,
                    json.dumps(
                        {
                            "error_code": "PAYLOAD_TOO_LARGE",
                            "message": f"the body is {length} bytes; the limit is {self.server.max_body_bytes}",
                        }
                    ).encode(),
                )
                return
            body = self.rfile.read(int(length))
        headers = {"Content-Type": self.headers.get("Content-Type") or "", "Content-Length": str(len(body))}
        for retry in (False, True):  # once more on a fresh connection: the kept one may have been closed
            target = self.server.upstream.target()
            if target is None:
                self._reply(
                    503,
                    json.dumps(
                        {"error_code": "NOT_SERVING", "message": "no model is served here yet"}
                    ).encode(),
                )
                return
            connection = self._connection(target, fresh=retry)
            try:
                connection.request(method, self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                if retry:
                    self._reply(
                        502,
                        json.dumps(
                            {
                                "error_code": "UPSTREAM_UNAVAILABLE",
                                "message": f"the serving container did not answer: {error}",
                            }
                        ).encode(),
                    )
                    return
                continue
            self._reply(response.status, answer, response.getheader("Content-Type") or JSON_TYPE)
            return

    def _connection(self, target: tuple[str, int], *, fresh: bool) -> http.client.HTTPConnection:
        pool = getattr(self._connections, "pool", None)
        if pool is None:
            pool = self._connections.pool = {}
        connection = pool.get(target)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            connection = pool[target] = _UpstreamConnection(*target, timeout=UPSTREAM_TIMEOUT_S)
        return connection

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")


class _UpstreamConnection(http.client.HTTPConnection):
    """A kept connection to the serving container that sends a request's headers and body unheld."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream_file: Path, max_body_bytes: int) -> None:
        super().__init__(address, _ProxyHandler)
        self.upstream = _Upstream(upstream_file)
        self.max_body_bytes = max_body_bytes


# --- commands ---------------------------------------------------------------------------------------------


def _serve_until_stopped(server: ThreadingHTTPServer) -> None:
    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.2)
    server.server_close()


def serve(
    model_dir: Path,
    *,
    host: str = "0.0.0.0",
    port: int = CONTAINER_PORT,
    info: dict[str, Any] | None = None,
    model_file: Path | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    model = LoadedModel(model_dir, model_file)
    # The model's framework leaves a large heap of long-lived objects: a full garbage collection walks all
    # of it (~170 ms for TensorFlow), and the lists a JSON batch allocates set one off every few dozen
    # requests. Frozen, they are skipped; the collector still sees everything allocated from here on.
    gc.collect()
    gc.freeze()
    server = ScoringServer(
        (host, port), model, dict(info or {}), max_batch=max_batch, max_body_bytes=max_body_bytes
    )
    print(
        f"[pushtrain] serving {model_dir} on {host}:{port} ({len(model.class_names)} classes, input "
        f"{list(model.input_shape)})",
        file=sys.stderr,
        flush=True,
    )
    _serve_until_stopped(server)


def proxy(upstream_file: Path, *, host: str, port: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    server = ProxyServer((host, port), upstream_file, max_body_bytes)
    print(f"[pushtrain] stable endpoint {host}:{port} -> {upstream_file}", file=sys.stderr, flush=True)
    _serve_until_stopped(server)
