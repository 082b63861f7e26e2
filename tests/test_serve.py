"""The prediction page: the page itself, and the same answers as `resnetlab predict` over HTTP."""

import io
import json
import threading
import time
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
    assert status == 400 and json.loads(body)["error"].startswith("the upload is not a readable image (")
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


def raw_request(server, raw: bytes, timeout: float = 10) -> bytes:
    """What the server answers to ``raw``, sent as is and left open for the answer."""
    import socket

    with socket.create_connection(server.server_address[:2], timeout=timeout) as s:
        s.sendall(raw)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_too_large_upload_is_refused_with_an_answer_the_sender_sees(server, monkeypatch):
    """urllib, like a browser, sends the whole body before it reads: the body is read and dropped, then refused."""
    from resnetlab import serve

    monkeypatch.setattr(serve, "MAX_UPLOAD", 1 << 20)
    status, body = request(server.url + "predict", bytes(16 << 20))  # more than the socket buffers hold
    assert status == 413 and "16,777,216 bytes is over the 1,048,576-byte limit" in json.loads(body)["error"]
    status, _ = request(server.url + "info")
    assert status == 200


def test_a_bad_or_short_content_length_gets_an_answer_and_frees_its_thread(server, monkeypatch):
    from resnetlab import serve

    answer = raw_request(server, b"POST /predict HTTP/1.0\r\nContent-Length: abc\r\n\r\nxxx")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Content-Length must be a number of bytes, not 'abc'" in answer
    monkeypatch.setattr(serve._Handler, "timeout", 0.5)
    answer = raw_request(server, b"POST /predict HTTP/1.0\r\nContent-Length: 1000\r\n\r\nshort")  # then nothing
    assert answer.startswith(b"HTTP/1.1 408 ") and b"stopped after 5 of the 1,000 bytes" in answer


def run_page_script(server, tmp_path, actions: str) -> list:
    """The page's script run by Node with a stand-in DOM and fetch; ``actions`` (JavaScript) push what they see to ``shown``."""
    import re
    import shutil
    import subprocess

    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    script = re.search(r"<script>(.*)</script>", server.page(), re.S).group(1)
    harness = """
const elements = {};
const element = () => ({ classList: { add() {}, remove() {} }, children: [], textContent: "", className: "", value: "",
                         prepend(c) { this.children.unshift(c); }, appendChild(c) { this.children.push(c); },
                         remove() { this.removed = true; },
                         insertRow() { return { insertCell: () => element() }; } });
globalThis.document = { getElementById: id => (elements[id] ??= element()), createElement: element };
const revoked = [];
globalThis.URL = { createObjectURL: () => "blob:", revokeObjectURL: url => revoked.push(url) };
const posted = [];
globalThis.fetch = async (url, options) => { posted.push(options.headers["X-Filename"]);
  return { ok: true, status: 200, json: async () => ({ predictions: [{ class: "Sneaker", probability: 1 }] }) }; };
const settle = () => new Promise(resolve => setTimeout(resolve, 10));
SCRIPT
(async () => {
  const shown = [];
  ACTIONS
  console.log(JSON.stringify(shown));
})();
""".replace("SCRIPT", script).replace("ACTIONS", actions)
    (tmp_path / "page.js").write_text(harness)
    done = subprocess.run(["node", str(tmp_path / "page.js")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_page_shows_an_error_when_the_upload_gets_no_answer(server, tmp_path):
    """A failed fetch or a reply that is not JSON is shown in the image's row, not left at "name: ...";
    the file's name starts each error once."""
    shown = run_page_script(server, tmp_path, """
  const replies = [
    () => { throw new TypeError("Failed to fetch"); },
    () => ({ ok: false, status: 502, statusText: "Bad Gateway", json: async () => { throw new SyntaxError("not JSON"); } }),
    () => ({ ok: false, status: 413, statusText: "", json: async () => ({ error: "too big" }) }),
    () => ({ ok: false, status: 400, statusText: "", json: async () => ({ error: "shoe.png is empty" }) }),
    () => ({ ok: false, status: 500, statusText: "Internal Server Error", json: async () => ({}) }),  // a proxy's, say
  ];
  for (const reply of replies) {
    globalThis.fetch = async () => reply();
    await classify({ name: "shoe.png" });
    const out = elements.results.children[0].children[1];
    shown.push([out.className, out.textContent]);
  }
""")
    assert shown == [["error", "shoe.png: no answer from the server (Failed to fetch)"],
                     ["error", "shoe.png: the server answered 502 Bad Gateway"],
                     ["error", "shoe.png: too big"],
                     ["error", "shoe.png is empty"],  # named by the server: not "shoe.png: shoe.png is empty"
                     ["error", "shoe.png: the server answered 500 Internal Server Error"]]


def test_a_run_that_cannot_be_read_is_not_called_a_port_problem(run_dir, tmp_path, capsys):
    import shutil
    import socket

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "config.json").unlink()
    (broken / "config.json").mkdir()  # exists, and reading it is an OSError, as an unreadable file's is
    assert main(["serve", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "listen" not in err and "--port" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot listen on 127.0.0.1:{port} (")


def test_an_ipv6_host_is_served_and_bracketed_in_the_url(run_dir):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    srv = PredictionServer(run_dir, host="::1", port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        assert srv.url == f"http://[::1]:{srv.server_address[1]}/"
        status, body = request(srv.url + "info")
        assert status == 200 and json.loads(body)["model"] == "resnet8"
    finally:
        srv.shutdown()
        srv.server_close()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(get_dataset("fashion-mnist", split="test").images[0, 0].numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, dict]:
    """A multipart/form-data body of (field, filename or None for a text field, content) parts, and its header."""
    boundary = "resnetlab-test-boundary"
    body = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_form_with_several_files_is_refused_not_half_answered(server):
    """`curl -F file=@a.png -F file2=@b.png`: one answer would hide that b.png went unanswered."""
    body, headers = form(("file", "a.png", png_bytes()), ("file2", "b.png", png_bytes()))
    status, reply = request(server.url + "predict", body, headers)
    assert status == 400 and json.loads(reply)["error"] == "one image per request; this one holds 2 files"


def test_a_chunked_upload_is_read_as_one_with_a_content_length(server, monkeypatch):
    """What `curl -H 'Transfer-Encoding: chunked'` and Python's requests with a generator send."""
    import http.client

    from resnetlab import serve

    data = png_bytes()
    _, expected = request(server.url + "predict?top_k=3", data)

    def post_chunked(pieces) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        connection.request("POST", "/predict?top_k=3", body=iter(pieces), encode_chunked=True,
                           headers={"Transfer-Encoding": "chunked", "X-Filename": "boot.png"})
        reply = connection.getresponse()
        return reply.status, reply.read()

    status, body = post_chunked([data[:100], data[100:101], data[101:]])
    assert status == 200 and json.loads(body)["predictions"] == json.loads(expected)["predictions"]
    assert json.loads(body)["name"] == "boot.png"
    monkeypatch.setattr(serve, "MAX_UPLOAD", 1 << 20)
    status, body = post_chunked([bytes(1 << 16)] * 64)  # 4 MiB: refused once past the limit, the rest dropped
    assert status == 413 and "1,048,576-byte limit" in json.loads(body)["error"]
    answer = raw_request(server, b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"chunk size" in answer


def test_upload_errors_name_the_file_and_fit_an_upload(server):
    body, headers = form(("file", "notimage.txt", b"just words"))
    status, reply = request(server.url + "predict", body, headers)
    error = json.loads(reply)["error"]
    assert status == 400 and error.startswith("notimage.txt is not a readable image (")
    assert error.endswith("; re-save it as PNG or JPEG") and "remove it" not in error
    status, reply = request(server.url + "predict", b"", {"X-Filename": "empty%20one.png"})  # the page's 0-byte file
    assert status == 400 and json.loads(reply)["error"] == "empty one.png is empty"
    body, headers = form(("file", "nothing.png", b""))
    status, reply = request(server.url + "predict", body, headers)
    assert status == 400 and json.loads(reply)["error"] == "nothing.png is empty"


def test_the_page_says_how_views_are_averaged_once_and_the_answers_are_averaged(run_dir, tmp_path):
    server = PredictionServer(run_dir, port=0, top_k=10, views="scales", scales=[28, 32, 48])
    page = server.page()
    path = tmp_path / "shoe.png"
    Image.fromarray(get_dataset("fashion-mnist", split="test").images[3, 0].numpy()).save(path)
    try:
        reply = server.predict(path.read_bytes(), "shoe.png")
    finally:
        server.server_close()
    assert page.count("averaged") == 1 and "28, 32 and 48" in page and "resized to 28x28" not in page
    model, config = load_model(run_dir)
    (averaged,) = predict_images(model, config, [path], top_k=10, views="scales", scales=[28, 32, 48])
    (single,) = predict_images(model, config, [path], top_k=10)
    assert [p["probability"] for p in reply["predictions"]] == pytest.approx(averaged.probabilities)
    assert averaged.probabilities != pytest.approx(single.probabilities)  # the views change the answer


def test_the_serve_command_passes_its_options_on(run_dir, capsys, monkeypatch):
    import resnetlab.serve

    calls = []
    monkeypatch.setattr(resnetlab.serve, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert main(["serve", str(run_dir), "--port", "65535", "--top-k", "3", "--scales", "28", "36"]) == 0
    [(args, kwargs)] = calls
    assert args[2:4] == (65535, 3) and kwargs["views"] == "scales" and list(kwargs["scales"]) == [28, 36]
    assert main(["serve", str(run_dir), "--top-k", "0"]) == 2  # refused before it listens
    assert "--top-k must be at least 1, got 0" in capsys.readouterr().err and len(calls) == 1


def test_choosing_the_same_file_again_uploads_it_again(server, tmp_path):
    """A file input fires change only when its value changes: the page clears it after each choice."""
    shown = run_page_script(server, tmp_path, """
  const input = elements.files;
  for (const round of [1, 2]) {
    input.files = [{ name: "shoe.png" }]; input.value = "C:\\\\fakepath\\\\shoe.png";
    input.onchange(); await settle();
    shown.push([posted.length, input.value]);
  }
  elements.drop.ondrop({ preventDefault() {}, dataTransfer: { files: [{ name: "a.png" }, { name: "b.png" }] } });
  await settle();
  shown.push(posted);
""")
    assert shown == [[1, ""], [2, ""], ["shoe.png", "shoe.png", "a.png", "b.png"]]


def test_head_unknown_parameters_and_a_form_top_k(server):
    import http.client

    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    connection.request("HEAD", "/")
    reply = connection.getresponse()
    assert reply.status == 200 and reply.getheader("Content-Type") == "text/html; charset=utf-8"
    assert int(reply.getheader("Content-Length")) > 1000 and reply.read() == b""
    status, body = request(server.url + "predict?topk=1", png_bytes())
    assert status == 400 and json.loads(body)["error"] == "unknown query parameter 'topk'; /predict takes top_k"
    body, headers = form(("top_k", None, b"2"), ("file", "boot.png", png_bytes()))  # curl -F top_k=2 -F file=@boot.png
    status, reply = request(server.url + "predict", body, headers)
    assert status == 200 and len(json.loads(reply)["predictions"]) == 2
    status, reply = request(server.url + "predict?top_k=3", body, headers)
    assert status == 400 and "top_k" in json.loads(reply)["error"]


def test_an_upload_far_over_the_limit_still_gets_its_413(server, monkeypatch):
    """Sent whole before urllib reads: a body several times the limit is read and dropped too, not cut off."""
    from resnetlab import serve

    status, body = request(server.url + "predict?topk=1", bytes(16 << 20))  # refused for its query, read all the same
    assert status == 400 and "topk" in json.loads(body)["error"]
    monkeypatch.setattr(serve, "MAX_UPLOAD", 1 << 20)
    status, body = request(server.url + "predict", bytes(100 << 20))
    assert status == 413 and "over the 1,048,576-byte limit" in json.loads(body)["error"]
    # A body whose end cannot be found is answered, then the answer's end is sent (a half-close): a client
    # that reads to the end before it closes is not kept waiting for the dropped rest.
    start = time.monotonic()
    answer = raw_request(server, b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nmore", timeout=30)
    assert answer.startswith(b"HTTP/1.1 400 ") and time.monotonic() - start < 5


def test_an_empty_host_means_every_interface(run_dir, capsys):
    srv = PredictionServer(run_dir, host="", port=0)
    try:
        assert srv.server_address[0] in ("0.0.0.0", "::")
    finally:
        srv.server_close()
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    from resnetlab import serve

    assert "up to 20 MB" in " ".join(capsys.readouterr().out.split()) and serve.MAX_UPLOAD == 20 << 20


def test_a_chunked_body_counts_its_framing_and_a_slow_body_has_one_deadline(server, monkeypatch):
    """One-byte chunks cost several times their data to frame: every byte sent counts against the limit.
    A client sending a byte now and then, each within the stall timeout, still gets one deadline in all."""
    from resnetlab import serve

    monkeypatch.setattr(serve, "MAX_UPLOAD", 100)
    answer = raw_request(server, b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"1\r\nx\r\n" * 40 + b"0\r\n\r\n")  # 40 bytes of data, 240 sent
    assert answer.startswith(b"HTTP/1.1 413 ") and b"passed the 100-byte limit" in answer

    monkeypatch.setattr(serve, "BODY_SECONDS", 1.0)
    import socket

    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.0\r\nContent-Length: 50\r\n\r\n")
        started = time.monotonic()
        for _ in range(6):  # a byte every 0.3 s: never a 30-second stall
            time.sleep(0.3)
            try:
                s.sendall(b"x")
            except OSError:  # the server has answered and closed
                break
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"it took over 1.0 seconds in all" in answer
    assert time.monotonic() - started < 5


def test_a_top_k_too_long_for_a_number_is_refused_not_a_server_error(server):
    status, body = request(server.url + "predict?top_k=" + "9" * 5000, png_bytes())
    assert status == 400 and "top_k must be a whole number of at least 1" in json.loads(body)["error"]


def test_the_page_fits_a_phone_and_a_keyboard_and_drops_a_preview_that_cannot_be_drawn(server, tmp_path):
    """Checked in Chromium by hand (Tab reaches the file input, Space opens it; nothing overflows 390 pixels);
    here, what made each of those work."""
    import re

    page = server.page()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    file_input = re.search(r'<input id="files"[^>]*>', page).group(0)
    assert " hidden" not in file_input  # a hidden input cannot take the focus
    assert '<div id="results" aria-live="polite">' in page  # answers are read out as they come
    shown = run_page_script(server, tmp_path, """
  await classify({ name: "notes.png" });
  const img = elements.results.children[0].children[0];
  shown.push(img.alt, Boolean(img.removed));
  img.onerror();
  shown.push(Boolean(img.removed), revoked.length);
""")
    assert shown == ["notes.png", False, True, 1]



def test_twenty_clients_at_once_are_all_answered(server):
    """Each waits its turn for the model, none is turned away (the listen queue was 5: up to 6 in 20 were reset)."""
    from concurrent.futures import ThreadPoolExecutor

    image = png_bytes()
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: request(server.url + "predict", image), range(40)))
    assert [status for status, _ in answers] == [200] * 40
    assert len({body for _, body in answers}) == 1  # the same image, the same answer


def test_an_upload_that_asks_to_continue_is_told_to_at_once(server):
    """curl sends "Expect: 100-continue" for bodies over 1 MB and waits a second for the go-ahead."""
    import socket

    image = png_bytes()
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(image)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(head)
        # Before the body is sent: HTTP/1.0's answer never came, and curl gave up waiting after a second.
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(image)
        answer = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
    assert len(json.loads(answer.split(b"\r\n\r\n", 1)[1])["predictions"]) == 10


def test_an_address_not_of_this_machine_is_called_a_host_problem(run_dir, capsys):
    assert main(["serve", str(run_dir), "--host", "192.0.2.1", "--port", "0"]) == 2  # TEST-NET-1: nobody's
    err = capsys.readouterr().err
    assert "check --host" in err and "--port" not in err


def test_the_http_details_a_client_relies_on(server, run_dir, monkeypatch):
    """A HEAD gets headers alone (on the wire, which http.client would hide); /info is JSON with the input a
    client must prepare; the upload limit is inclusive; top_k is given once; the server's default k is 5."""
    import socket

    from resnetlab import serve

    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"HEAD /info HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: application/json" in head and body == b""

    with urllib.request.urlopen(server.url + "info") as reply:
        assert reply.headers["Content-Type"] == "application/json"
        info = json.loads(reply.read())
    assert (info["channels"], info["image_size"], info["model"]) == (1, 28, "resnet8")

    image = png_bytes()
    monkeypatch.setattr(serve, "MAX_UPLOAD", len(image))
    assert request(server.url + "predict", image)[0] == 200
    assert request(server.url + "predict", image + b"\0")[0] == 413
    status, body = request(server.url + "predict?top_k=1&top_k=5", image)
    assert status == 400 and json.loads(body)["error"] == "top_k is given 2 times; give it once"

    default = PredictionServer(run_dir, port=0)
    try:
        assert len(default.predict(image, "boot.png")["predictions"]) == 5
    finally:
        default.server_close()
