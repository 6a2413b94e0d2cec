"""`pawnet serve`: every endpoint and every kind of bad input through FastAPI's TestClient,
then the real server in a subprocess over HTTP: end to end, uploads cut off while streaming,
a smoke load test, and a clean SIGTERM with requests in flight."""

from __future__ import annotations

import contextlib
import io
import json
import re
import select
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
import serve_load
from fastapi.testclient import TestClient
from helpers import real_photos
from PIL import Image
from typer.testing import CliRunner

from pawnet.cli import app as cli_app
from pawnet.errors import ConfigError
from pawnet.inference.predictor import Predictor, load
from pawnet.serve.app import create_app
from pawnet.serve.batcher import Batcher, QueueFull
from pawnet.serve.settings import ServeSettings

CATS = real_photos("cat", 2, "test")
DOG = real_photos("dog", 1, "test")[0]
PHOTO = CATS[0].read_bytes()


@pytest.fixture(scope="module")
def predictor(trained_run) -> Predictor:
    return load(trained_run)


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, ServeSettings(max_wait_ms=2))) as c:
        yield c


def _ok(client) -> None:
    """The service still answers a normal request."""
    response = client.post("/v1/predict", files={"file": ("cat.jpg", PHOTO, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.json()[0]["label"]


# --- endpoints ---------------------------------------------------------------------------


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "/v1/predict" in html and "/v1/model" in html
    assert 'name="viewport"' in html  # phone-width screens
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no CDN
    assert "<script src" not in html and "stylesheet" not in html


def test_healthz_model_docs(client, predictor):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["classes"] == predictor.classes
    assert info["image_size"] == predictor.image_size
    assert info["model_name"] == predictor.spec.model_name
    assert info["limits"]["max_batch"] == 32
    assert info["ood_threshold"] == predictor.spec.ood_threshold is not None
    assert info["min_confidence"] == predictor.min_confidence
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_model_loads_in_lifespan_from_a_run_folder(trained_run):
    app = create_app(trained_run)
    assert TestClient(app).get("/healthz").status_code == 503  # no lifespan: not loaded
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        info = c.get("/v1/model").json()
        assert info["provenance"]["data_fingerprint"]
        assert sum(info["provenance"]["photos"].values()) > 0


def test_predict_multipart_matches_the_cli(client, trained_run):
    paths = [*CATS, DOG]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200, response.text
    served = response.json()
    cli = CliRunner().invoke(cli_app, ["predict", str(trained_run), *map(str, paths),
                                       "--json"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout)
    assert [s["path"] for s in served] == [p.name for p in paths]
    for s, e in zip(served, expected, strict=True):
        assert s.keys() == e.keys()
        assert s["label"] == e["label"]
        assert s["ood_score"] == pytest.approx(e["ood_score"], abs=1e-6)
        for name, p in e["probabilities"].items():
            assert s["probabilities"][name] == pytest.approx(p, abs=1e-6)


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream", None])
def test_predict_raw_body(client, predictor, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/predict", content=PHOTO, headers=headers)
    assert response.status_code == 200, response.text
    [result] = response.json()
    assert result["path"] == "<bytes>"
    expected = predictor.predict(PHOTO)[0]
    assert result["label"] == expected.label
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)


def test_one_bad_file_among_good_ones_gets_its_own_error(client):
    files = [("file", ("cat.jpg", PHOTO, "image/jpeg")),
             ("file", ("notes.txt", b"not a photo\n", "text/plain"))]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 200
    good, bad = response.json()
    assert good["label"] and set(bad) == {"path", "error"}
    assert bad["path"] == "notes.txt" and bad["error"].startswith("not an image")


def test_metrics(client):
    _ok(client)
    client.post("/v1/predict", content=b"", headers={"Content-Type": "image/jpeg"})
    text = client.get("/metrics").text
    assert 'pawnet_requests_total{endpoint="/v1/predict",status="200"} 1.0' in text
    assert 'pawnet_requests_total{endpoint="/v1/predict",status="400"} 1.0' in text
    assert 'pawnet_request_duration_seconds_bucket{endpoint="/v1/predict",le="0.1"}' in text
    assert 'pawnet_batch_size_bucket{le="1.0"} 1.0' in text
    assert "pawnet_queue_depth 0.0" in text
    client.get("/no/such/page")
    assert 'endpoint="other",status="404"' in client.get("/metrics").text


# --- bad input: a 4xx with a one-line reason, and the service keeps working -----------------


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (9500, 9500)).save(buffer, "PNG")  # 90 M pixels in a few KB
    return buffer.getvalue()


def _deep_bomb() -> bytes:
    """A 9000 x 9000 16-bit PNG: 175 KB that once took 2 GB and 7 s to decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((9000, 9000), 40000, np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(PHOTO)).save(buffer, "TIFF")
    return buffer.getvalue()


def _file(name, data, kind="image/jpeg"):
    return {"files": [("file", (name, data, kind))]}


BAD_INPUTS = {
    "empty body": ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400,
                   "empty request body"),
    "zero-byte file": (_file("zero.jpg", b""), 422, "empty file"),
    "not an image": (_file("notes.txt", b"hello\n" * 50, "text/plain"), 422, "not an image"),
    "not an image raw": ({"content": b"hello", "headers": {"Content-Type": "image/png"}}, 422,
                         "not an image"),
    "truncated": (_file("half.jpg", PHOTO[: len(PHOTO) // 2]), 422, "truncated or corrupt"),
    "unsupported format": (_file("photo.tiff", _tiff(), "image/tiff"), 422,
                           "unsupported format TIFF"),
    "decompression bomb": (_file("bomb.png", _bomb(), "image/png"), 422, "too many pixels"),
    "16-bit bomb": (_file("deep.png", _deep_bomb(), "image/png"), 422, "too many pixels"),
    "json content type": ({"json": {"file": "cat.jpg"}}, 415, "unsupported content type"),
    "text content type": ({"content": PHOTO, "headers": {"Content-Type": "text/plain"}}, 415,
                          "unsupported content type"),
    "form-urlencoded": ({"data": {"file": "/etc/passwd"}}, 415, "unsupported content type"),
    "oversize raw": ({"content": PHOTO * 200, "headers": {"Content-Type": "image/jpeg"}}, 413,
                     "upload too large"),
    "oversize multipart": (_file("big.jpg", PHOTO * 200), 413, "upload too large"),
    "too many files": ({"files": [("file", (f"{i}.jpg", b"x", "image/jpeg"))
                                  for i in range(33)]}, 413, "too many files"),
    "unknown text field": ({"files": [("file", ("cat.jpg", PHOTO, "image/jpeg"))],
                            "data": {"threshold": "0.5"}}, 400, "unknown form field 'threshold'"),
    "unknown file field": ({"files": [("image", ("cat.jpg", PHOTO, "image/jpeg"))]}, 400,
                           "unknown form field 'image'"),
    "text instead of a file": ({"data": {"file": "/etc/passwd"},
                                "files": [("other", ("x", b"", "text/plain"))]}, 400,
                               "unknown form field"),
    "file field as text": ({"content": b'--b\r\nContent-Disposition: form-data; name="file"'
                                       b'\r\n\r\n/etc/passwd\r\n--b--\r\n',
                            "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
                           400, "must be a file upload"),
    "no files": ({"content": b"--b--\r\n",
                  "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400,
                 "no files"),
    "multipart without boundary": ({"content": PHOTO,
                                    "headers": {"Content-Type": "multipart/form-data"}}, 400,
                                   "malformed multipart"),
    "garbage multipart": ({"content": b"--b\r\nnonsense\r\n\r\n\x00\x01",
                           "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
                          400, ""),
}


@pytest.fixture(scope="module")
def small_client(predictor):
    """Uploads limited to 1 MB, so oversize requests stay small in tests."""
    with TestClient(create_app(predictor, ServeSettings(max_wait_ms=2, max_upload_mb=1))) as c:
        yield c


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_4xx_with_a_reason(small_client, case):
    kwargs, status, reason = BAD_INPUTS[case]
    response = small_client.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and reason in detail
    _ok(small_client)


def test_no_server_file_is_read_by_a_client_supplied_name(client):
    response = client.post("/v1/predict", **_file("/etc/hostname", PHOTO))
    assert response.status_code == 200 and response.json()[0]["path"] == "hostname"
    response = client.post("/v1/predict", **_file("../../etc/passwd", b"root:x:0:0"))
    assert response.status_code == 422 and "root:" not in response.text
    assert client.get("/../../etc/passwd").status_code == 404
    assert client.get("/static/index.html").status_code == 404


def test_wrong_method_and_path(client):
    assert client.get("/v1/predict").status_code == 405
    assert client.get("/v2/predict").status_code == 404


# --- safety -----------------------------------------------------------------------------


def test_api_key_guards_v1_only(predictor, monkeypatch):
    monkeypatch.setenv("PAWNET_TEST_KEY", "s3cret")
    with TestClient(create_app(predictor, ServeSettings(api_key_env="PAWNET_TEST_KEY"))) as c:
        for path in ("/v1/model",):
            assert c.get(path).status_code == 401
            assert c.get(path).headers["www-authenticate"] == "Bearer"
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Basic s3cret"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/predict", content=PHOTO,
                      headers={"Content-Type": "image/jpeg"}).status_code == 401
        assert c.post("/v1/predict", content=PHOTO, headers={
            "Content-Type": "image/jpeg", "Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200


def test_a_key_with_spaces_around_it_in_the_environment_still_lets_clients_in(
        predictor, monkeypatch):
    monkeypatch.setenv("PAWNET_TEST_KEY", " s3cret\n")  # as `export KEY="$(cat file)" ` gives
    with TestClient(create_app(predictor, ServeSettings(api_key_env="PAWNET_TEST_KEY"))) as c:
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cre"}).status_code == 401
    monkeypatch.setenv("PAWNET_TEST_KEY", "   ")
    with pytest.raises(ConfigError, match="empty or not set"):
        ServeSettings(api_key_env="PAWNET_TEST_KEY")


def test_cors_off_unless_configured(predictor):
    origin = {"Origin": "http://elsewhere.example"}
    with TestClient(create_app(predictor)) as c:
        assert "access-control-allow-origin" not in c.get("/v1/model", headers=origin).headers
    settings = ServeSettings(cors_origins=["http://elsewhere.example"])
    with TestClient(create_app(predictor, settings)) as c:
        response = c.get("/v1/model", headers=origin)
        assert response.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_settings_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match="max_batch must be between 1 and"):
        ServeSettings(max_batch=0)
    with pytest.raises(ConfigError, match="log_level must be one of"):
        ServeSettings(log_level="loud")
    monkeypatch.delenv("PAWNET_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="--api-key-env names PAWNET_TEST_KEY"):
        ServeSettings(api_key_env="PAWNET_TEST_KEY")


def test_explain_answers_the_label_with_a_heat_map_and_an_overlay(client, predictor,
                                                                  monkeypatch):
    import base64
    import io

    from PIL import Image

    files = [("file", ("cat.jpg", PHOTO, "image/jpeg")),
             ("file", ("notes.txt", b"hi", "text/plain"))]
    response = client.post("/v1/explain", files=files)
    assert response.status_code == 200, response.text
    good, bad = response.json()
    [plain] = client.post("/v1/predict", files=files[:1]).json()
    assert good["label"] == plain["label"] and good["explained_class"] in predictor.classes
    heat = np.array(good["heatmap"])
    assert heat.ndim == 2 and heat.min() >= 0 and heat.max() <= 1
    assert good["method"] == "layer-cam" and good["resolution"] == list(heat.shape)
    header, data = good["overlay"].split(",", 1)
    assert header == "data:image/png;base64"
    overlay = Image.open(io.BytesIO(base64.b64decode(data)))
    assert overlay.size == (predictor.image_size, predictor.image_size)
    assert bad["error"].startswith("not an image")
    only_bad = client.post("/v1/explain", files=files[1:])
    assert only_bad.status_code == 422
    from pawnet.reporting import heatmap

    why = ("flat has no convolutional feature maps, so there is no map of where it looked. "
           "Try: a convolutional model such as efficientnet-lite0")

    def refuse(*args, **kwargs):
        raise ConfigError(why)

    monkeypatch.setattr(heatmap, "heat_maps", refuse)
    refused = client.post("/v1/explain", files=files[:1])
    assert refused.status_code == 422 and refused.json()["detail"] == why
    _ok(client)
    with TestClient(create_app(predictor, ServeSettings(max_wait_ms=2))) as c:  # at start-up
        refused = c.post("/v1/explain", files=files[:1])
        assert refused.status_code == 422 and refused.json()["detail"] == why
        _ok(c)


def test_min_confidence_setting_makes_timid_answers_unsure(predictor):
    with pytest.raises(ConfigError, match=r"min_confidence must be between 0\.0 and 1\.0"):
        ServeSettings(min_confidence=1.5)
    with TestClient(create_app(predictor.bundle.path.parent,
                               ServeSettings(min_confidence=0.9999))) as c:
        assert c.get("/v1/model").json()["min_confidence"] == 0.9999
        [answer] = c.post("/v1/predict", content=PHOTO,
                          headers={"Content-Type": "image/jpeg"}).json()
    assert max(answer["probabilities"].values()) < 0.9999  # the toy model is timid
    assert answer["label"] in ("unsure", "neither")
    assert answer["reason"].startswith(("no class likely enough (", "unlike the training"))


def test_every_answer_says_why_it_is_not_a_class(client, predictor):
    tiny = io.BytesIO()
    Image.open(CATS[0]).resize((6, 5)).save(tiny, "PNG")  # below the model's min_side
    assert predictor.spec.min_side > 6
    answers = client.post("/v1/predict", files=[
        ("file", ("tiny.png", tiny.getvalue(), "image/png")),
        ("file", ("cat.jpg", PHOTO, "image/jpeg"))]).json()
    assert (answers[0]["label"], answers[0]["reason"]) == ("unsure", "too small (6x5)")
    assert answers[1]["reason"] is None or answers[1]["label"] in ("unsure", "neither")


def test_settings_parse_like_the_flags():
    settings = ServeSettings(port="8080", cors_origins="https://a.example, https://b.example")
    assert settings.port == 8080
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    with pytest.raises(ConfigError, match="port must be int, received: 'eighty'"):
        ServeSettings(port="eighty")


def test_the_server_allows_fewer_pixels_than_the_cli_by_default():
    from pawnet.data.images import MAX_PIXELS

    assert 48_000_000 < ServeSettings().max_pixels < MAX_PIXELS  # a 48 MP phone photo passes


def test_the_servers_pixel_limit_holds_for_a_given_predictor(predictor):
    with TestClient(create_app(predictor, ServeSettings(max_pixels=1000))) as c:
        response = c.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 422 and "too many pixels" in response.json()["detail"]


def test_serve_flags_become_the_settings(monkeypatch):
    seen = {}
    monkeypatch.setattr("pawnet.serve.app.run", lambda model, settings: seen.update(
        model=model, settings=settings))
    result = CliRunner().invoke(cli_app, ["serve", "imagenet-catdog", "--max-batch", "4",
                                          "--cors-origins", "https://a.example,https://b.example",
                                          "--timeout-s", "2.5", "--log-level", "warning"])
    assert result.exit_code == 0, result.output
    assert seen == {"model": "imagenet-catdog", "settings": ServeSettings(
        max_batch=4, cors_origins=("https://a.example", "https://b.example"), timeout_s=2.5,
        log_level="warning")}


def test_every_setting_is_a_serve_flag(trained_run):
    result = CliRunner().invoke(cli_app, ["serve", str(trained_run), "--max-batch", "0"])
    assert result.exit_code == 2
    assert "error: max_batch must be between 1 and 4096, received: 0" in result.output


def test_cli_serve_refuses_a_bad_model_or_a_missing_key(tmp_path, monkeypatch):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "error: no model at" in result.output
    monkeypatch.delenv("PAWNET_TEST_KEY", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "x", "--api-key-env", "PAWNET_TEST_KEY"])
    assert result.exit_code == 2 and "PAWNET_TEST_KEY" in result.output


# --- batching, queue bound, time limit ---------------------------------------------------


def test_batcher_gathers_concurrent_images_up_to_max_batch():
    calls = []

    def model(pixels):
        calls.append(len(pixels))
        return pixels.reshape(len(pixels), -1)[:, :2].astype(float)

    batcher = Batcher(model, max_batch=4, max_wait_s=0.3, queue_size=16)
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(6)]
    futures = [f for image in images for f in batcher.submit([image])]
    batcher.start()
    rows = [f.result(5) for f in futures]
    batcher.stop(5)
    assert calls == [4, 2]
    assert [row[0] for row in rows] == list(range(6))  # each request gets its own row


def test_batcher_survives_any_failing_batch_and_later_requests_succeed():
    failures = iter([ValueError("broken model"), None, None])

    def model(pixels):
        if (exc := next(failures, None)) is not None:
            raise exc
        return pixels.reshape(len(pixels), -1)[:, :1].astype(float)

    seen = []

    def on_batch(n):
        seen.append(n)
        if len(seen) == 1:
            raise RuntimeError("metrics broke")

    batcher = Batcher(model, max_batch=1, max_wait_s=0, queue_size=8, on_batch=on_batch)
    batcher.start()
    with pytest.raises(ValueError, match="broken model"):
        batcher.submit([np.zeros((2, 2, 3), np.uint8)])[0].result(5)
    odd = batcher.submit([np.zeros((3, 3, 3), np.uint8)])[0]  # its row is set, then on_batch
    assert odd.result(5)[0] == 0  # fails: the request keeps its answer
    assert batcher.submit([np.full((2, 2, 3), 7, np.uint8)])[0].result(5)[0] == 7
    assert batcher.alive
    batcher.stop(5)
    assert not batcher.alive


def test_healthz_says_when_the_model_worker_has_stopped(predictor):
    with TestClient(create_app(predictor)) as c:
        assert c.get("/healthz").status_code == 200
        c.app.state.pawnet.batcher.stop(5)
        response = c.get("/healthz")
        assert response.status_code == 503 and "worker" in response.json()["status"]


def test_batcher_queue_is_bounded_and_all_or_nothing():
    batcher = Batcher(lambda p: p, max_batch=1, max_wait_s=0, queue_size=3)
    batcher.submit([np.zeros(1)] * 2)
    with pytest.raises(QueueFull):
        batcher.submit([np.zeros(1)] * 2)
    assert batcher.depth == 2


class _GatedPredictor(Predictor):
    """The real model, held at a gate once `closed` is set, to fill the queue on purpose."""

    def __init__(self, inner: Predictor):
        super().__init__(inner.bundle)
        self.closed = threading.Event()
        self.gate = threading.Event()
        self.held = threading.Event()  # a model call is waiting at the gate

    def rows(self, pixels, tta=None):
        if self.closed.is_set():
            self.held.set()
            self.gate.wait(30)
        return super().rows(pixels, tta)


def test_full_queue_gets_503_with_retry_after_then_recovers(predictor):
    gated = _GatedPredictor(predictor)
    settings = ServeSettings(max_batch=1, max_wait_ms=0, queue_size=1)
    with TestClient(create_app(gated, settings)) as c:
        gated.closed.set()
        answers = []

        def post():
            answers.append(c.post("/v1/predict", content=PHOTO,
                                  headers={"Content-Type": "image/jpeg"}).status_code)

        first = threading.Thread(target=post)  # held in the model call
        first.start()
        assert gated.held.wait(20)  # else the second could find the first still queued
        second = threading.Thread(target=post)  # waits in the queue
        second.start()
        deadline = time.monotonic() + 20
        while ("pawnet_queue_depth 1.0" not in c.get("/metrics").text
               and time.monotonic() < deadline):
            time.sleep(0.05)
        response = c.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "busy" in response.json()["detail"]
        gated.gate.set()
        first.join(10)
        second.join(10)
        assert answers == [200, 200]
        gated.closed.clear()
        _ok(c)


def test_request_time_limit(predictor):
    gated = _GatedPredictor(predictor)
    with TestClient(create_app(gated, ServeSettings(timeout_s=0.5))) as c:
        gated.closed.set()
        response = c.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 503 and "within 0.5 s" in response.json()["detail"]
        gated.gate.set()
        gated.closed.clear()
        _ok(c)


# --- the real server, over HTTP ------------------------------------------------------------


@pytest.fixture(scope="module")
def live(trained_run):
    """`pawnet serve RUN` in a subprocess on a free loopback port; yields its URL."""
    with serve_load.served(trained_run, "--max-upload-mb", "1", "--header-timeout-s", "1.5",
                           "--keep-alive-s", "1", "--max-connections", "12") as server:
        yield server.url
    assert server.exit_code in serve_load.CLEAN_EXIT


def _post(url, data, content_type="image/jpeg", timeout=30):
    request = urllib.request.Request(url + "/v1/predict", data=data,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_end_to_end_over_http(live, predictor):
    with urllib.request.urlopen(live + "/healthz") as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(live + "/v1/model") as response:
        info = json.loads(response.read())
    assert info["classes"] == predictor.classes and info["runtime"] == "onnx"  # auto's pick
    with urllib.request.urlopen(live + "/") as response:
        assert b"/v1/predict" in response.read()
    boundary = "pawnetboundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{p.name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
        for p in CATS) + f"--{boundary}--\r\n".encode()
    status, results = _post(live, body, f"multipart/form-data; boundary={boundary}")
    assert status == 200
    expected = predictor.predict(CATS)
    for got, want in zip(results, expected, strict=True):
        assert got["label"] == want.label
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-6)
    assert _post(live, b"")[0] == 400
    assert _post(live, b"not an image")[0] == 422
    assert _post(live, PHOTO)[0] == 200


@pytest.mark.parametrize("runtime", ["keras", "litert"])
def test_the_server_runs_on_each_runtime(trained_run, predictor, runtime):
    with serve_load.served(trained_run, "--runtime", runtime, "--max-batch", "4") as server:
        with urllib.request.urlopen(server.url + "/v1/model") as response:
            assert json.loads(response.read())["runtime"] == runtime
        status, results = _post(server.url, PHOTO)
    assert status == 200 and server.exit_code in serve_load.CLEAN_EXIT
    want = predictor.predict([PHOTO])[0]
    assert results[0]["label"] == want.label
    assert results[0]["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)


def _raw_http(url, head: bytes, chunks=(), timeout=10) -> tuple[bytes, int]:
    """Send a request by hand; returns (what the server answered, body bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered: stop sending, as curl does
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server answered and closed while we were still sending
            pass
        answer = b""
        try:
            while part := sock.recv(65536):
                answer += part
        except OSError:
            pass
    return answer, sent


def test_oversize_upload_is_refused_while_streaming(live):
    # A declared length over the limit is refused before any of the body is sent.
    answer, _ = _raw_http(live, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                b"image/jpeg\r\nContent-Length: 500000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"upload too large" in answer
    # A chunked body with no declared length is cut off soon after it passes 1 MB.
    chunk = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"  # 64 KB chunks; 64 MB if all were sent

    def chunks():
        for _ in range(1024):
            time.sleep(0.002)
            yield chunk

    answer, sent = _raw_http(live, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                   b"image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n", chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 8 * 1024 * 1024
    assert _post(live, PHOTO)[0] == 200


def _closed_after(sock, trickle: bytes = b"", limit: float = 8.0) -> float:
    """Seconds until the server closes `sock`, sending `trickle` a byte at a time."""
    start = time.monotonic()
    sock.settimeout(0.25)
    for byte in [trickle[i : i + 1] for i in range(len(trickle))] or [b""]:
        try:
            if byte:
                sock.sendall(byte)
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
    sock.settimeout(limit)
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return float("inf")
    except OSError:
        pass
    return time.monotonic() - start


def test_idle_and_slow_header_connections_are_closed(live):
    host, port = live.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as idle:  # before: open past 70 s
        assert _closed_after(idle) < 4
    with socket.create_connection((host, int(port))) as slow:  # a header a byte at a time
        assert _closed_after(slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40) < 4
    with socket.create_connection((host, int(port))) as kept:  # idle after a response
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(1024).startswith(b"HTTP/1.1 200")
        assert _closed_after(kept) < 3
    assert _post(live, PHOTO)[0] == 200


def test_connections_beyond_the_cap_get_503_until_others_close(live):
    host, port = live.removeprefix("http://").split(":")
    held = [socket.create_connection((host, int(port))) for _ in range(11)]
    try:
        answer, _ = _raw_http(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert _post(live, PHOTO)[0] == 200


def test_smoke_load_has_no_5xx_and_no_dropped_connections(live):
    bodies = [p.read_bytes() for p in real_photos("cat", 4, "test") + real_photos("dog", 4, "test")]
    result = serve_load.measure(live, bodies, clients=8, requests=48, seconds=60)
    assert result["requests"] == 48
    assert result["errors_5xx"] == 0 and result["dropped"] == 0
    assert result["statuses"] == {200: 48}
    assert result["mean_batch"] >= 1


def test_sigterm_lets_in_flight_requests_finish(trained_run):
    # A long batching wait keeps the requests in flight when SIGTERM arrives.
    with serve_load.served(trained_run, "--max-wait-ms", "3000") as server:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_post(server.url, PHOTO)[0]))
                   for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
    for t in threads:
        t.join(30)
    assert answers == [200, 200, 200]
    assert server.exit_code in serve_load.CLEAN_EXIT
    log = serve_load.output(server.proc)
    assert "Shutting down" in log and "Traceback" not in log


def test_model_info_survives_an_odd_provenance(predictor):
    from pawnet.serve.app import provenance_summary

    bundle = predictor.bundle
    odd = type(bundle)(bundle.spec, {"data": [1], "created": "x"}, fingerprint="f")
    assert provenance_summary(odd)["photos"] == {}
    odd.provenance = {"data": {"counts": {"train": {"cat": "many", "dog": 3}, "val": 2}}}
    assert provenance_summary(odd)["photos"] == {"train": 3}


def test_a_short_soak_with_hostile_requests_has_no_5xx_and_bounded_memory(trained_run):
    import serve_soak

    photos = [p.read_bytes() for p in real_photos("cat", 4, "test") + real_photos("dog", 4, "test")]
    result = serve_soak.run(str(trained_run), photos, clients=8, seconds=6, hostile_every=10)
    mixed = result["hostile"]
    assert result["baseline"]["errors_5xx"] == 0 and mixed["errors_5xx"] == 0, mixed
    assert not any(kind.startswith("good") for kind in mixed["dropped"]), mixed["dropped"]
    answered = {key.rsplit(" ", 1)[0]: int(key.rsplit(" ", 1)[1]) for key in mixed["statuses"]}
    assert answered == {"good": 200, "bomb": 422, "16-bit bomb": 422, "large transparent": 200,
                        "garbage": 422, "truncated": 422, "oversize": 413, "wrong type": 415,
                        "slow body": 408}
    # this model is tiny, so one legal 144 MB decode is more than its idle peak: the bound
    # is the decode budget (256 MB at once), however many requests decode together
    assert result["peak_mb"] - result["idle_peak_mb"] < 300
    assert result["exit_code"] in serve_load.CLEAN_EXIT


def test_the_server_can_average_each_photo_with_its_mirror(predictor, trained_run):
    with TestClient(create_app(predictor, ServeSettings(max_wait_ms=2, tta=True))) as c:
        response = c.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert c.get("/v1/model").json()["tta"] is True
    want = load(trained_run, tta=True).predict([PHOTO])[0].probabilities
    assert response.json()[0]["probabilities"] == pytest.approx(want, abs=1e-5)


def test_the_real_server_takes_every_setting(trained_run, predictor):
    small, big = io.BytesIO(), io.BytesIO()  # under and over --max-pixels
    Image.open(io.BytesIO(PHOTO)).resize((200, 150)).save(small, "JPEG")
    Image.open(io.BytesIO(PHOTO)).resize((400, 300)).save(big, "PNG")  # never drafted
    small, big = small.getvalue(), big.getvalue()
    assert predictor.min_confidence > 0  # the toy model is timid: its own is 1.0
    with serve_load.served(trained_run, "--min-confidence", "0", "--tta", "--max-pixels",
                           "100000", "--runtime", "keras") as server:
        with urllib.request.urlopen(server.url + "/v1/model") as response:
            info = json.loads(response.read())
        status, [answer] = _post(server.url, small)
        refused, reason = _post(server.url, big, "image/png")
    assert server.exit_code in serve_load.CLEAN_EXIT
    assert (info["min_confidence"], info["tta"], info["runtime"]) == (0.0, True, "keras")
    assert status == 200 and answer["label"] in (*predictor.classes, "neither")  # not unsure
    want = load(trained_run, tta=True).predict([small])[0].probabilities
    plain = load(trained_run).predict([small])[0].probabilities
    assert answer["probabilities"] == pytest.approx(want, abs=1e-5)
    assert answer["probabilities"] != pytest.approx(plain, abs=1e-5)
    assert refused == 422 and "too many pixels" in reason["detail"]
    assert "\n" not in reason["detail"]


def test_a_given_predictor_gets_the_settings_without_being_changed(predictor):
    from pawnet.data.images import MAX_PIXELS
    from pawnet.serve.app import serving_predictor

    served = serving_predictor(predictor, ServeSettings(min_confidence=0.9, tta=True,
                                                        max_pixels=1000, max_batch=4))
    assert (served.min_confidence, served.tta, served.max_pixels, served.batch_size) == (
        0.9, True, 1000, 4)
    assert served.runtime is predictor.runtime  # "auto" keeps the one it has
    assert (predictor.tta, predictor.max_pixels) == (False, MAX_PIXELS)
    keras = serving_predictor(predictor, ServeSettings(runtime="keras"))
    assert keras.runtime.name == "keras" and keras.min_confidence == predictor.min_confidence


# --- heat-maps: their own thread and queue, one deadline per request -----------------------


class _SlowHeatMaps:
    """`pawnet.reporting.heatmap.heat_maps`, slowed down: `per_photo` seconds a photo, and held
    at a gate while `closed` is set; records which thread drew how many photos, and when."""

    def __init__(self, monkeypatch, per_photo: float = 0.0):
        from pawnet.reporting import heatmap

        self.real, self.per_photo = heatmap.heat_maps, per_photo
        self.closed, self.gate, self.entered = threading.Event(), threading.Event(), \
            threading.Event()
        self.calls: list[tuple[float, int, str]] = []
        monkeypatch.setattr(heatmap, "heat_maps", self)

    def __call__(self, model, pixels, class_index=None, **options):
        self.calls.append((time.monotonic(), len(pixels), threading.current_thread().name))
        self.entered.set()
        if self.closed.is_set():
            self.gate.wait(15)
        time.sleep(self.per_photo * len(pixels))
        return self.real(model, pixels, class_index, **options)


def _photos(n: int) -> list:
    return [("file", (f"cat{i}.jpg", PHOTO, "image/jpeg")) for i in range(n)]


def test_explain_answers_in_order_as_one_photo_at_a_time_would(client, predictor):
    from pawnet.reporting.explain import explained

    paths = [CATS[0], DOG, CATS[1]]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    files.insert(2, ("file", ("notes.txt", b"hi", "text/plain")))
    response = client.post("/v1/explain", files=files)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["path"] for a in answers] == [CATS[0].name, DOG.name, "notes.txt", CATS[1].name]
    assert "error" in answers[2]
    for path, answer in zip(paths, answers[:2] + answers[3:], strict=True):
        pixels = predictor.decode(path)
        alone = explained(predictor, predictor.predict([path])[0], pixels)
        assert answer["explained_class"] == alone["explained_class"]
        assert np.allclose(answer["heatmap"], alone["heatmap"], atol=1e-3)
        assert answer["method"] == "layer-cam"
        assert answer["resolution"] == alone["resolution"] == list(np.shape(answer["heatmap"]))


@pytest.mark.integration
def test_explain_draws_a_joined_backbone_models_heat_map_on_the_pet(joined_run):
    canvas, side, corner = 520, 260, (230, 200)  # a cat in a quarter of a grey canvas
    pasted = Image.new("RGB", (canvas, canvas), (128, 128, 128))
    pasted.paste(Image.open(CATS[0]).convert("RGB").resize((side, side)), corner)
    buffer = io.BytesIO()
    pasted.save(buffer, "PNG")
    predictor = load(joined_run, runtime="keras")  # no ONNX export, one batch size to warm up
    with TestClient(create_app(predictor, ServeSettings(max_batch=1))) as c:
        response = c.post("/v1/explain", files={"file": ("cat.png", buffer.getvalue())})
    assert response.status_code == 200, response.text
    [answer] = response.json()
    heat = np.array(answer["heatmap"])
    assert answer["method"] == "layer-cam" and answer["resolution"] == [33, 33] == list(heat.shape)
    row, col = np.unravel_index(heat.argmax(), heat.shape)  # its cell's centre, on the canvas
    x, y = (col + 0.5) * canvas / heat.shape[1], (row + 0.5) * canvas / heat.shape[0]
    assert corner[0] <= x < corner[0] + side and corner[1] <= y < corner[1] + side, (x, y)


def _until(condition, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_explain_has_one_time_limit_for_the_whole_request(predictor, monkeypatch):
    with TestClient(create_app(predictor, ServeSettings(timeout_s=1, max_wait_ms=2))) as c:
        _SlowHeatMaps(monkeypatch, per_photo=0.5)  # before: 8 photos, 4 s, then 200
        start = time.monotonic()
        response = c.post("/v1/explain", files=_photos(8))
        took = time.monotonic() - start
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["detail"] == "busy: no heat-maps within 1 s"
        assert took < 2.5


def test_a_full_explain_queue_gets_503_with_retry_after(predictor, monkeypatch):
    settings = ServeSettings(explain_queue_size=2, max_wait_ms=2)
    with TestClient(create_app(predictor, settings)) as c:
        slow = _SlowHeatMaps(monkeypatch)
        slow.closed.set()
        answers = []

        def post(n):
            answers.append(c.post("/v1/explain", files=_photos(n)).status_code)

        first = threading.Thread(target=post, args=(2,))  # held in heat_maps
        first.start()
        assert slow.entered.wait(15)
        second = threading.Thread(target=post, args=(2,))  # waits in the queue
        second.start()
        assert _until(lambda: "pawnet_explain_queue_depth 2.0" in c.get("/metrics").text)
        response = c.post("/v1/explain", files=_photos(1))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "busy" in response.json()["detail"]
        slow.gate.set()
        first.join(15)
        second.join(15)
        assert answers == [200, 200]
        assert c.post("/v1/explain", files=_photos(2)).status_code == 200
        too_many = c.post("/v1/explain", files=_photos(3))
        assert too_many.status_code == 413 and "allowed: 2" in too_many.json()["detail"]


def test_healthz_answers_at_once_while_explain_requests_wait(predictor, monkeypatch):
    with TestClient(create_app(predictor, ServeSettings(max_wait_ms=2))) as c:
        slow = _SlowHeatMaps(monkeypatch)
        slow.closed.set()
        answers = []
        posts = [threading.Thread(target=lambda: answers.append(
            c.post("/v1/explain", files=_photos(1)).status_code)) for _ in range(44)]
        for t in posts:  # before: each held a thread of the pool that /healthz needs
            t.start()
        assert slow.entered.wait(15)
        time.sleep(1.0)  # the others queue up behind the first
        start = time.monotonic()
        assert c.get("/healthz").status_code == 200
        took = time.monotonic() - start
        queued = c.app.state.pawnet.explainer.depth
        slow.gate.set()
        for t in posts:
            t.join(30)
        assert took < 1 and queued > 0
        assert answers == [200] * 44


@contextlib.contextmanager
def _uvicorn(app):
    """`app` served by uvicorn on a free loopback port in a thread of this process, so
    that a test can slow its heat-maps down; yields the URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=serve_load.free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        assert _until(lambda: server.started, 60)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _multipart(n: int) -> tuple[bytes, bytes]:
    """(request head, body) of a multipart POST /v1/explain of `n` photos."""
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.jpg"'
                    b"\r\nContent-Type: image/jpeg\r\n\r\n" + PHOTO + b"\r\n"
                    for _ in range(n)) + b"--b--\r\n"
    head = (f"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode()
    return head, body


def test_abandoned_explain_requests_leave_no_work_and_no_threads_behind(predictor,
                                                                         monkeypatch):
    app = create_app(predictor, ServeSettings(timeout_s=3, max_wait_ms=2,
                                              explain_queue_size=128))
    with _uvicorn(app) as url:
        slow = _SlowHeatMaps(monkeypatch)
        slow.closed.set()
        host, port = url.removeprefix("http://").split(":")
        head, body = _multipart(16)  # four heat_maps calls of 4 photos
        clients = []
        for _ in range(6):  # each client sends its photos, waits a little, then leaves
            sock = socket.create_connection((host, int(port)))
            sock.sendall(head + body)
            clients.append(sock)
        metrics = lambda: urllib.request.urlopen(url + "/metrics").read().decode()  # noqa: E731
        _until(lambda: "pawnet_explain_queue_depth 92.0" in metrics(), 20)
        threads_waiting = threading.active_count()
        for sock in clients:
            sock.close()
        left = time.monotonic()
        time.sleep(0.5)  # the server notices the clients have gone
        slow.gate.set()  # the one call already drawing may finish; nothing else may start
        time.sleep(1.5)
        started_after = [photos for at, photos, _ in slow.calls if at > left]
        assert started_after == [], slow.calls
        assert {name for _, _, name in slow.calls} == {"pawnet-explain"}
        assert "pawnet_explain_queue_depth 0.0" in metrics()
        assert threading.active_count() <= threads_waiting + 2
        status, _ = _post(url, PHOTO)  # and the service still works
        assert status == 200
