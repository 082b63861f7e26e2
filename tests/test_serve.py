"""The prediction page: the page itself, and the same answers as `resnetlab predict` over HTTP."""

import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import get_dataset
from resnetlab.predict import predict_images
from resnetlab.runs import load_model
from resnetlab.serve import PredictionServer

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture
def run_dir(trained_run):
    return trained_run


@pytest.fixture
def server(run_dir):
    srv = PredictionServer(run_dir, port=0, top_k=10)  # port 0: any free port
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {})) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_page_names_the_model_and_its_classes(server):
    status, body = request(server.url)
    page = body.decode()
    assert status == 200 and "<title>resnetlab: resnet8</title>" in page and "Ankle boot" in page
    status, body = request(server.url + "info")
    assert json.loads(body)["classes"][9] == "Ankle boot"


def test_an_uploaded_png_gets_the_answer_predict_gives(server, run_dir, tmp_path):
    image = get_dataset("fashion-mnist", split="test").images[0, 0].numpy()
    path = tmp_path / "boot.png"
    Image.fromarray(image).resize((100, 100)).save(path)  # any size: it is resized as in training
    status, body = request(server.url + "predict", path.read_bytes(), {"X-Filename": "boot%20one.png"})
    assert status == 200
    reply = json.loads(body)
    assert reply["name"] == "boot one.png"
    model, config = load_model(run_dir)
    (expected,) = predict_images(model, config, [path], top_k=10)
    assert [p["class"] for p in reply["predictions"]] == expected.classes
    assert [p["probability"] for p in reply["predictions"]] == pytest.approx(expected.probabilities)
    assert sum(p["probability"] for p in reply["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_a_form_upload_and_top_k_in_the_query_answer_as_the_raw_body_does(server, tmp_path):
    """`curl -F file=@boot.png URL/predict?top_k=3`: the form's file, three classes."""
    buffer = io.BytesIO()
    Image.fromarray(get_dataset("fashion-mnist", split="test").images[0, 0].numpy()).save(buffer, "PNG")
    _, raw = request(server.url + "predict", buffer.getvalue())
    boundary = "resnetlab-test-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"boot.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    status, body = request(server.url + "predict?top_k=3", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, body
    reply = json.loads(body)
    assert reply["name"] == "boot.png" and reply["predictions"] == json.loads(raw)["predictions"][:3]
    status, body = request(server.url + "predict?top_k=0", buffer.getvalue())
    assert status == 400 and "top_k" in json.loads(body)["error"]
    status, _ = request(server.url + "predict")  # a GET
    assert status == 405


def test_bad_requests_get_a_reason_and_the_server_goes_on(server):
    status, body = request(server.url + "predict", b"this is not an image")
    assert status == 400 and "not a readable image" in json.loads(body)["error"]
    assert "BytesIO" not in json.loads(body)["error"]  # the upload, not Python's name for it
    status, body = request(server.url + "nowhere")
    assert status == 404 and "error" in json.loads(body)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, "JPEG")
    status, body = request(server.url + "predict", buffer.getvalue())  # still serving, colour photo too
    assert status == 200 and len(json.loads(body)["predictions"]) == 10


def test_a_client_that_leaves_early_is_no_error_and_others_are_one_line(server, capsys):
    for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"), ValueError("odd")):
        try:
            raise error
        except Exception:  # socketserver calls handle_error inside the except block, as here
            server.handle_error(None, ("10.0.0.7", 5000))
    err = capsys.readouterr().err
    assert err == "error answering 10.0.0.7: ValueError: odd\n"  # no traceback, and nothing for the other two


def test_serve_refuses_a_missing_run_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_serve_refuses_views_the_run_cannot_give_before_it_listens(run_dir, capsys):
    """Ten crops need a run trained with a scaling recipe: refused at the start, as predict refuses them."""
    assert main(["serve", str(run_dir), "--port", "0", "--ten-crop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ten-crop testing") and err.count("\n") == 1


def test_class_names_cannot_inject_markup(run_dir, tmp_path):
    import shutil

    from resnetlab import runs

    odd = tmp_path / "odd"
    shutil.copytree(run_dir, odd)
    config = runs.read_config(odd)
    config["classes"][0] = "<script>alert(1)</script>"
    runs.write_json(odd / runs.CONFIG, config)
    server = PredictionServer(odd, port=0)
    page = server.page()
    server.server_close()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
