"""A prediction page for a trained run: drop images in a browser, see the classes the model gives them.

``resnetlab serve RUN_DIR`` (or ``--pretrained resnet50`` for torchvision's ImageNet weights) starts
Python's own HTTP server (no web framework to install):

    GET  /          the page
    GET  /info      the run as JSON: model, classes, input size
    POST /predict   an image file as the request body, or a multipart form's file -> JSON top-k classes
                    (``?top_k=N`` for other than the server's k)

so scripts can use it too: ``curl --data-binary @shoe.png http://127.0.0.1:8000/predict``
or ``curl -F file=@shoe.png http://127.0.0.1:8000/predict``.
It listens on 127.0.0.1 unless told otherwise: it is a tool for one machine, not a public service.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Sequence
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import torch

from .data import DataError
from .devices import pick_device
from .evaluate import check_views, describe_views, view_scales
from .predict import predict_images
from .pretrained import load_published
from .runs import load_model

MAX_UPLOAD = 20 << 20  # bytes; bigger bodies are refused
# A refused body up to this size is read and dropped first: a browser (or urllib) sends the whole
# body before it reads the answer, and would see a broken connection instead of the refusal.
MAX_DISCARD = 4 * MAX_UPLOAD

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnetlab: {model}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
#drop {{ border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }}
#drop.over {{ background: #eef4ff; }}
.result {{ display: flex; gap: 1rem; align-items: center; margin: 1rem 0; }}
.result img {{ width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; }}
.bar {{ background: #4a7bd0; height: 0.9rem; border-radius: 3px; }}
td {{ padding: 0.1rem 0.4rem; }} .error {{ color: #b00020; }}
</style></head><body>
<h1>{model}</h1>
<p>Trained on {dataset}: {classes}. Images are converted to {channels} channel(s) and {sizing}.</p>
<label id="drop">Drop images here, or click to choose<input id="files" type="file" accept="image/*" multiple hidden></label>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("files");
drop.ondragover = e => {{ e.preventDefault(); drop.classList.add("over"); }};
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => {{ e.preventDefault(); drop.classList.remove("over"); [...e.dataTransfer.files].forEach(classify); }};
input.onchange = () => [...input.files].forEach(classify);
async function classify(file) {{
  const row = document.createElement("div"); row.className = "result";
  const img = document.createElement("img"); img.src = URL.createObjectURL(file); row.appendChild(img);
  const out = document.createElement("div"); out.textContent = file.name + ": ..."; row.appendChild(out);
  document.getElementById("results").prepend(row);
  let reply, data;
  try {{
    reply = await fetch("predict", {{ method: "POST", body: file, headers: {{ "X-Filename": encodeURIComponent(file.name) }} }});
    data = await reply.json();
  }} catch (e) {{  // no answer (the server stopped, the connection broke), or one that is not JSON
    data = {{ error: reply ? `the server answered ${{reply.status}} ${{reply.statusText}}` : `no answer from the server (${{e.message}})` }};
  }}
  if (!reply || !reply.ok || data.error) {{ out.className = "error"; out.textContent = file.name + ": " + data.error; return; }}
  const table = document.createElement("table");
  for (const p of data.predictions) {{
    const tr = table.insertRow();
    tr.insertCell().textContent = p.class;
    tr.insertCell().innerHTML = `<div class="bar" style="width:${{Math.max(2, 200 * p.probability)}}px"></div>`;
    tr.insertCell().textContent = (100 * p.probability).toFixed(1) + "%";
  }}
  out.textContent = file.name; out.appendChild(table);
}}
</script></body></html>
"""


class PredictionServer(ThreadingHTTPServer):
    """An HTTP server holding one trained model: a run's, or published weights (``pretrained="resnet50"``)."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that left before its answer was written is no error of the server's; others get one line."""
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            print(f"error answering {client_address[0]}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    def __init__(self, run_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5,
                 device: torch.device | str = "cpu", pretrained: str | None = None, views: str | None = None,
                 scales: Sequence[int] | None = None) -> None:
        self.model, self.config = load_published(pretrained, device) if pretrained else load_model(run_dir, device)
        self.device, self.top_k = torch.device(device), top_k
        # The test-time views each upload is averaged over (predict's).
        self.views = views
        self.scales = view_scales(self.config["image_size"], scales)
        if views is not None:  # refused now, not at every upload
            check_views(views, self.config.get("resize_size"), self.config["image_size"])
        self.lock = threading.Lock()  # one forward pass at a time: threads would only fight over the cores
        try:  # around the bind alone: a run that cannot be read is no port problem
            # IPv4 or IPv6, whichever the host is (the class alone knows only IPv4), as http.server's main picks it.
            self.address_family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                       flags=socket.AI_PASSIVE)[0]
            super().__init__(address, _Handler)
        except socket.gaierror as e:  # before the OSError it is a kind of
            raise RuntimeError(f"cannot listen on {host}: no such address here ({e.strerror or e}); check --host") from None
        except OSError as e:
            raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def page(self) -> str:
        c = self.config
        classes = ", ".join(c["classes"][:20]) + (f" and {len(c['classes']) - 20} more" if len(c["classes"]) > 20 else "")
        size = c["image_size"]
        if c.get("resize_size"):
            sizing = f"resized to {c['resize_size']} pixels on the shorter side, then centre-cropped to {size}x{size}"
        else:
            sizing = f"resized to {size}x{size}"
        if self.views:
            sizing += f"; scores averaged over views ({describe_views(self.views, self.scales)})"
        # Class and folder names are the user's own: escaped, so a name like "<b>" shows as written.
        return PAGE.format(model=escape(c["model"]), dataset=escape(c["dataset"]), classes=escape(classes),
                           channels=c["channels"], sizing=sizing)

    def info(self) -> dict:
        c = self.config
        return {k: c[k] for k in ("model", "dataset", "classes", "channels", "image_size", "resize_size") if k in c}

    def predict(self, data: bytes, name: str, top_k: int | None = None) -> dict:
        """Top-k classes (default the server's k) of one encoded image; DataError when it is not an image."""
        top_k = min(top_k or self.top_k, len(self.config["classes"]))
        with self.lock:
            (pred,) = predict_images(self.model, self.config, [io.BytesIO(data)], top_k, self.device, names=[name],
                                     views=self.views, scales=self.scales)
        return {"name": name, "predictions": [{"class": c, "probability": p}
                                              for c, p in zip(pred.classes, pred.probabilities)]}


class _Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    timeout = 30  # seconds a client may stall mid-request before its thread is given back

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page().encode(), "text/html; charset=utf-8")
        elif path == "/info":
            self._json(HTTPStatus.OK, self.server.info())
        elif path == "/predict":
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST an image to /predict"}, allow="POST")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}; try / or POST /predict"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/predict":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"POST goes to /predict, not {url.path}"})
            return
        query = parse_qs(url.query)
        try:
            top_k = int(query["top_k"][0]) if "top_k" in query else None
        except ValueError:
            top_k = 0
        if top_k is not None and top_k < 1:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"top_k must be a whole number of at least 1, not {query['top_k'][0]!r}"})
            return
        length = (self.headers.get("Content-Length") or "0").strip()
        if not (length.isascii() and length.isdigit()):
            self.close_connection = True  # where the body ends is unknown
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length must be a number of bytes, not {length!r}"})
            return
        size = int(length)
        if size == 0:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "send an image file as the request body (with its Content-Length), "
                                                         "or as a multipart form's file (curl -F file=@photo.jpg)"})
            return
        if size > MAX_UPLOAD:
            self.close_connection = True
            if size <= MAX_DISCARD:
                self._receive(size, keep=False)  # all of it or not, the answer is this one
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"{size:,} bytes is over the {MAX_UPLOAD:,}-byte limit"})
            return
        data, stalled = self._receive(size)
        if len(data) < size:
            self.close_connection = True
            status, why = ((HTTPStatus.REQUEST_TIMEOUT, f"nothing more came for {self.timeout} seconds") if stalled
                           else (HTTPStatus.BAD_REQUEST, "the client stopped sending"))
            self._json(status, {"error": f"the body stopped after {len(data):,} of the {size:,} bytes its "
                                         f"Content-Length gives: {why}"})
            return
        name = unquote(self.headers.get("X-Filename", "upload"))
        if self.headers.get_content_type() == "multipart/form-data":  # an HTML form, or curl -F file=@photo.jpg
            data, name = _form_file(self.headers["Content-Type"], data)
            if data is None:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "the form holds no file"})
                return
        try:
            self._json(HTTPStatus.OK, self.server.predict(data, name, top_k))
        except DataError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # the page gets a reason; the server goes on
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})

    def _receive(self, size: int, keep: bool = True) -> tuple[bytes, bool]:
        """Up to ``size`` bytes of the body, a chunk at a time (read and dropped unless ``keep``), and whether
        the client stalled; fewer than ``size`` when it stalled or stopped."""
        chunks, left = [], size
        try:
            while left:
                chunk = self.rfile.read1(min(left, 1 << 20))  # read1: what came before a stall is counted
                if not chunk:
                    break
                left -= len(chunk)
                if keep:
                    chunks.append(chunk)
        except TimeoutError:
            return b"".join(chunks), True
        return b"".join(chunks), False

    def _json(self, status: HTTPStatus, data: dict, allow: str | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", allow)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, allow: str | None = None) -> None:
        self.send_response(status)
        if allow:
            self.send_header("Allow", allow)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # one short line per request, not Apache's format
        if not getattr(self, "command", None):  # no request came (a connection left idle): what happened instead
            print(f"{self.client_address[0]}: {format % args}", flush=True)
            return
        print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}".rstrip(), flush=True)


def _form_file(content_type: str, body: bytes) -> tuple[bytes | None, str]:
    """The first file of a multipart/form-data body, and its name (None if it holds none)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in message.iter_parts() if message.is_multipart() else []:
        if part.get_filename() is not None:
            return part.get_payload(decode=True), part.get_filename()
    return None, ""


def serve(run_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5, device: str = "cpu",
          pretrained: str | None = None, views: str | None = None, scales: Sequence[int] | None = None) -> None:
    """Serve the prediction page of a run (or of published weights) until Ctrl-C; ``views`` as for ``predict_images``."""
    server = PredictionServer(run_dir, host, port, top_k, pick_device(device), pretrained=pretrained, views=views,
                              scales=scales)
    source = server.config.get("weights") if pretrained else run_dir
    print(f"serving {server.config['model']} ({source}) at {server.url}  (Ctrl-C stops)", flush=True)
    with server:
        server.serve_forever()
