"""A prediction page for a trained run: drop images in a browser, see the classes the model gives them.

``resnetlab serve RUN_DIR`` (or ``--pretrained resnet50`` for torchvision's ImageNet weights) starts
Python's own HTTP server (no web framework to install):

    GET  /          the page (HEAD too)
    GET  /info      the run as JSON: model, classes, input size
    POST /predict   one image file as the request body (with a Content-Length, or chunked), or as a
                    multipart form's one file -> JSON top-k classes (``?top_k=N``, or a form's ``top_k``
                    field, for other than the server's k); up to MAX_UPLOAD (20 MB) a request

so scripts can use it too: ``curl --data-binary @shoe.png http://127.0.0.1:8000/predict``
or ``curl -F file=@shoe.png http://127.0.0.1:8000/predict``.
It listens on 127.0.0.1 unless told otherwise: it is a tool for one machine, not a public service.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import torch

from .data import DataError
from .devices import pick_device
from .evaluate import check_views, view_scales
from .predict import predict_images
from .pretrained import load_published
from .runs import load_model

MAX_UPLOAD = 20 << 20  # bytes (20 MB); bigger bodies are refused
# A refused body is read and dropped after the refusal is sent, for up to this many seconds: urllib (as
# some browsers) sends the whole body before it reads the answer, and would see a broken connection
# instead of the refusal. Bounded in time, not size: on one machine hundreds of MB go in a second.
DRAIN_SECONDS = 10
BODY_SECONDS = 120  # a whole upload's time: 20 MB at 1.4 Mbit/s
MAX_LINE = 1024  # bytes of one line of a chunked body's framing (a chunk's size, a trailer field)
MAX_TRAILERS = 64  # trailer fields after a chunked body's last chunk; nothing here reads them
NO_IMAGE = ("no image came: send an image file as the request body (curl --data-binary @photo.jpg), "
            "or as a multipart form's file (curl -F file=@photo.jpg)")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnetlab: {model}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
#drop {{ display: block; border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }}
#drop.over {{ background: #eef4ff; }}
#drop:focus-within {{ outline: 3px solid #4a7bd0; outline-offset: 2px; }}
/* Out of sight but not hidden: Tab reaches the file input, Space opens it, and the label names it. */
#files {{ position: absolute; width: 1px; height: 1px; opacity: 0; overflow: hidden; }}
.result {{ display: flex; gap: 1rem; align-items: center; margin: 1rem 0; }}
.result > div {{ flex: 1; min-width: 0; overflow-wrap: anywhere; }}  /* a long file name wraps, not the page */
.result table {{ width: 100%; max-width: 28rem; }}
.result td {{ overflow-wrap: normal; }}  /* a class name wraps between words only */
.result td.share {{ width: 45%; }}  /* the bars take what the names leave, not more */
.result td.percent {{ white-space: nowrap; width: 1%; }}  /* as narrow as its text */
.result img {{ width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; }}
@media (max-width: 30rem) {{ .result img {{ width: 64px; height: 64px; }} }}  /* after the rule it overrides */
.bar {{ background: #4a7bd0; height: 0.9rem; border-radius: 3px; }}
td {{ padding: 0.1rem 0.4rem; }} .error {{ color: #b00020; }}
</style></head><body>
<h1>{model}</h1>
<p>Trained on {dataset}: {classes}. Images are converted to {channels} channel(s) and {sizing}.</p>
<label id="drop">Drop images here, or click to choose<input id="files" type="file" accept="image/*" multiple></label>
<div id="results" aria-live="polite"></div>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("files");
drop.ondragover = e => {{ e.preventDefault(); drop.classList.add("over"); }};
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => {{ e.preventDefault(); drop.classList.remove("over"); [...e.dataTransfer.files].forEach(classify); }};
// A file dropped beside the zone would otherwise replace the page with itself.
document.ondragover = document.ondrop = e => e.preventDefault();
// Cleared after each choice: a file input fires change only when its value changes, and the same file chosen again would not.
input.onchange = () => {{ [...input.files].forEach(classify); input.value = ""; }};
async function classify(file) {{
  const row = document.createElement("div"); row.className = "result";
  const img = document.createElement("img"); img.alt = file.name; row.appendChild(img);
  img.onload = () => URL.revokeObjectURL(img.src);  // drawn: the file's copy in memory can go
  img.onerror = () => {{ URL.revokeObjectURL(img.src); img.remove(); }};  // no broken-image icon beside the error
  img.src = URL.createObjectURL(file);
  const out = document.createElement("div"); out.textContent = file.name + ": ..."; row.appendChild(out);
  document.getElementById("results").prepend(row);
  let reply, data;
  try {{
    reply = await fetch("predict", {{ method: "POST", body: file, headers: {{ "X-Filename": encodeURIComponent(file.name) }} }});
    data = await reply.json();
  }} catch (e) {{  // no answer (the server stopped, the connection broke), or one that is not JSON
    data = {{ error: reply ? `the server answered ${{reply.status}} ${{reply.statusText}}` : `no answer from the server (${{e.message}})` }};
  }}
  if (!reply || !reply.ok || data.error) {{
    const error = data.error || `the server answered ${{reply.status}} ${{reply.statusText}}`;
    // The server's errors about the file itself start with its name: not said twice.
    out.className = "error"; out.textContent = error.startsWith(file.name + " ") ? error : file.name + ": " + error;
    return;
  }}
  const table = document.createElement("table");
  for (const p of data.predictions) {{
    const tr = table.insertRow();
    tr.insertCell().textContent = p.class;
    const share = tr.insertCell(); share.className = "share";
    share.innerHTML = `<div class="bar" style="width:${{Math.max(1, 100 * p.probability)}}%"></div>`;
    const percent = tr.insertCell(); percent.className = "percent";
    percent.textContent = (100 * p.probability).toFixed(1) + "%";
  }}
  out.textContent = file.name; out.appendChild(table);
}}
</script></body></html>
"""


class PredictionServer(ThreadingHTTPServer):
    """An HTTP server holding one trained model: a run's, or published weights (``pretrained="resnet50"``)."""

    daemon_threads = True
    # Connections the system holds while every thread is busy: socketserver's 5 reset the sixth of
    # twenty clients that arrive together.
    request_queue_size = 128
    # HTTPServer lets a restarted server take its port at once; on Windows the same option lets a second
    # server share a port already served, where it should be told to pick another --port.
    allow_reuse_address = os.name != "nt"

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]) -> None:
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
            # "" is every interface, as in socket.bind(("", port)); getaddrinfo spells that None (0.0.0.0 first).
            self.address_family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                       flags=socket.AI_PASSIVE)[0]
            super().__init__(address, _Handler)
        except socket.gaierror as e:  # before the OSError it is a kind of
            raise RuntimeError(f"cannot listen on {host}: no such address here ({e.strerror or e}); check --host") from None
        except OSError as e:
            fix = "check --host: it must be an address of this machine" if e.errno == errno.EADDRNOTAVAIL else "pick another --port"
            raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror or e}); {fix}") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def page(self) -> str:
        c = self.config
        classes = ", ".join(c["classes"][:20]) + (f" and {len(c['classes']) - 20} more" if len(c["classes"]) > 20 else "")
        size, resize = c["image_size"], c.get("resize_size")
        # What the model sees of an image, said once: with views, the single view's sizing no longer holds.
        if self.views == "scales":
            *rest, last = self.scales
            sides = f"{', '.join(map(str, rest))} and {last}" if rest else str(last)
            sizing = f"seen whole with the shorter side at {sides} pixels, and mirrored, the scores of these views averaged"
        elif self.views == "ten-crop":
            sizing = (f"resized to {resize} pixels on the shorter side, then seen as ten {size}x{size} crops (the corners, "
                      "the centre, and their mirror images), the scores of these views averaged")
        elif resize:
            sizing = f"resized to {resize} pixels on the shorter side, then centre-cropped to {size}x{size}"
        else:
            sizing = f"resized to {size}x{size}"
        # Class and folder names are the user's own: escaped, so a name like "<b>" shows as written.
        return PAGE.format(model=escape(c["model"]), dataset=escape(c["dataset"]), classes=escape(classes),
                           channels=c["channels"], sizing=sizing)

    def info(self) -> dict:
        c = self.config
        return {k: c[k] for k in ("model", "dataset", "classes", "channels", "image_size", "resize_size") if k in c}

    def predict(self, data: bytes, name: str | None, top_k: int | None = None) -> dict:
        """Top-k classes (default the server's k) of one encoded image, and its file name if it came with one;
        DataError when it is not an image."""
        top_k = min(top_k or self.top_k, len(self.config["classes"]))
        upload = io.BytesIO(data)
        upload.name = name or "the upload"  # what an error about the file calls it
        name = name or "upload"
        with self.lock:
            (pred,) = predict_images(self.model, self.config, [upload], top_k, self.device, names=[name],
                                     views=self.views, scales=self.scales)
        return {"name": name, "predictions": [{"class": c, "probability": p}
                                              for c, p in zip(pred.classes, pred.probabilities)]}


class _Refusal(Exception):
    """A request answered with an error instead: its status, the reason the client is shown, and for a body
    refused unread, how much of it is left to drop (None: until the client closes)."""

    def __init__(self, status: HTTPStatus, reason: str, unread: int | None = 0) -> None:
        super().__init__(reason)
        self.status, self.reason, self.unread = status, reason, unread


class _Handler(BaseHTTPRequestHandler):
    server: PredictionServer
    timeout = 30  # seconds a client may stall mid-request before its thread is given back
    # HTTP/1.1, so that a client sending "Expect: 100-continue" (curl, for uploads over 1 MB) is told to go
    # on at once rather than waiting a second for the answer HTTP/1.0 never gives; each answer still
    # closes its connection (_send), one request a connection as before.
    protocol_version = "HTTP/1.1"

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

    def do_HEAD(self) -> None:
        """GET's status and headers without its body (``_send`` leaves it out): what curl -I and link checkers ask."""
        self.do_GET()

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/predict":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"POST goes to /predict, not {url.path}"})
            return
        name = None  # the file's own name, when the request gives it
        try:
            data = self._body()  # first, even when the query is refused: see DRAIN_SECONDS
            query = parse_qs(url.query, keep_blank_values=True)  # blank: "?top_k=" is refused, not ignored
            for key in query:
                if key != "top_k":  # a misspelt parameter would otherwise be ignored without a word
                    raise _Refusal(HTTPStatus.BAD_REQUEST, f"unknown query parameter {key!r}; /predict takes top_k")
            top_k = _top_k(query["top_k"]) if "top_k" in query else None
            if "X-Filename" in self.headers:  # the page's name for the file, URL-encoded as headers are ASCII
                name = unquote(self.headers["X-Filename"])
            if self.headers.get_content_type() == "multipart/form-data":  # an HTML form, or curl -F file=@photo.jpg
                files, fields = _form(self.headers["Content-Type"], data)
                if len(files) != 1:  # one answer for the first would hide that the others went unanswered
                    raise _Refusal(HTTPStatus.BAD_REQUEST, "the form holds no file" if not files
                                   else f"one image per request; this one holds {len(files)} files")
                [(name, data)] = files
                if "top_k" in fields:  # curl -F top_k=3 -F file=@photo.jpg
                    if top_k is not None:
                        raise _Refusal(HTTPStatus.BAD_REQUEST,
                                       "top_k is given both in the query and in the form; give it once")
                    top_k = _top_k(fields["top_k"])
            if not data:
                raise _Refusal(HTTPStatus.BAD_REQUEST, f"{name} is empty" if name else NO_IMAGE)
            answer = self.server.predict(data, name, top_k)
        except _Refusal as refusal:
            self.close_connection = True  # after a refusal, where the next request would start may be unknown
            self._json(refusal.status, {"error": refusal.reason})
            if refusal.unread != 0:
                self._drain(refusal.unread)
        except DataError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # the page gets a reason; the server goes on
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})
        else:
            self._json(HTTPStatus.OK, answer)

    def _body(self) -> bytes:
        """The request body, whole: by its Content-Length, or chunked (as curl and requests send a stream of
        unknown length). A ``_Refusal`` when it is over MAX_UPLOAD, malformed, or stops before its end."""
        self._deadline = time.monotonic() + BODY_SECONDS
        try:
            return self._whole_body()
        finally:
            self.connection.settimeout(self.timeout)  # the reads may have shortened it

    def _whole_body(self) -> bytes:
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:  # it overrides any Content-Length (RFC 9112, 6.3)
            if coding.strip().lower() != "chunked":
                raise _Refusal(HTTPStatus.NOT_IMPLEMENTED, f"Transfer-Encoding {coding!r} is not supported: send the "
                               "image file as it is, chunked or with a Content-Length", unread=None)
            return self._chunked_body()
        length = (self.headers.get("Content-Length") or "0").strip()
        if not (length.isascii() and length.isdigit()):
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"Content-Length must be a number of bytes, not {length!r}",
                           unread=None)
        size = int(length)
        if size > MAX_UPLOAD:
            raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{size:,} bytes is over the {MAX_UPLOAD:,}-byte limit",
                           unread=size)
        body = bytearray()
        self._read_into(body, size, f"the {size:,} bytes its Content-Length gives")
        return bytes(body)

    def _chunked_body(self) -> bytes:
        """A chunked body: chunks, each after a line with its size in hexadecimal, up to one of size 0, then
        trailer fields and a blank line. Refused as soon as its chunks pass MAX_UPLOAD, before reading more."""
        body, sent = bytearray(), 0
        while True:
            line = self._line()
            digits = line.split(b";")[0].strip()  # what follows a ";" (chunk extensions) means nothing here
            if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", digits):  # int(, 16) alone would take "0x1f", "+1f" or "1_f"
                raise _Refusal(HTTPStatus.BAD_REQUEST, "a chunk size must be a hexadecimal number, not "
                               f"{digits.decode('latin-1')!r}", unread=None)
            size = int(digits, 16)
            if size == 0:
                break
            # Every byte sent counts, the framing's too: a stream of one-byte chunks would otherwise cost
            # several times its data in time and memory.
            sent += len(line) + 2 + size + 2
            if sent > MAX_UPLOAD:
                raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the chunked body passed the {MAX_UPLOAD:,}-byte limit", unread=None)
            self._read_into(body, size, f"the {size:,} bytes of a chunk")
            if self._line():
                raise _Refusal(HTTPStatus.BAD_REQUEST,
                               f"a chunk of {size:,} bytes is followed by more than its size says", unread=None)
        for _ in range(MAX_TRAILERS):
            if not self._line():  # the blank line that ends the body
                return bytes(body)
        raise _Refusal(HTTPStatus.BAD_REQUEST, f"the chunked body has over {MAX_TRAILERS} trailer fields", unread=None)

    def _line(self) -> bytes:
        """One line of a chunked body's framing, without its CRLF."""
        try:
            self._wait_at_most()
            line = self.rfile.readline(MAX_LINE + 1)
        except TimeoutError:
            raise _Refusal(HTTPStatus.REQUEST_TIMEOUT, f"the chunked body stopped: {self._why_timed_out()}") from None
        if len(line) > MAX_LINE:
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"a line of the chunked body is over {MAX_LINE} bytes", unread=None)
        if not line.endswith(b"\n"):
            raise _Refusal(HTTPStatus.BAD_REQUEST,
                           "the chunked body stopped before its last chunk: the client stopped sending")
        return line.rstrip(b"\r\n")

    def _read_into(self, body: bytearray, size: int, what: str) -> None:
        """Add ``size`` bytes of the body to ``body``, as they come; a ``_Refusal`` saying how much of ``what``
        came when the client stalls or takes over BODY_SECONDS in all, or stops sending first."""
        left, stalled = size, False
        try:
            while left:
                self._wait_at_most()
                piece = self.rfile.read1(min(left, 1 << 20))  # read1: what came before a stall is counted
                if not piece:
                    break
                body += piece
                left -= len(piece)
        except TimeoutError:
            stalled = True
        if left:
            status, why = ((HTTPStatus.REQUEST_TIMEOUT, self._why_timed_out()) if stalled
                           else (HTTPStatus.BAD_REQUEST, "the client stopped sending"))
            raise _Refusal(status, f"the body stopped after {size - left:,} of {what}: {why}")

    def _wait_at_most(self) -> None:
        """Let the next read wait no longer than ``timeout``, nor past ``_deadline`` (the body's, or the drain's):
        a client sending a byte every few seconds would otherwise hold its thread for as long as it likes."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.connection.settimeout(min(left, self.timeout))

    def _why_timed_out(self) -> str:
        if time.monotonic() >= self._deadline:
            return f"it took over {BODY_SECONDS} seconds in all"
        return f"nothing more came for {self.timeout} seconds"

    def _drain(self, size: int | None) -> None:
        """Read and drop what is left of a refused body (``size`` bytes, None: until the client closes), for up to
        DRAIN_SECONDS: a client that sends it all before reading then finds the refusal, not a reset connection."""
        self._deadline = time.monotonic() + DRAIN_SECONDS
        try:
            # The refusal is sent whole: a client that reads to the end before it closes sees the end now,
            # and closes, which ends the drain too, instead of both waiting out DRAIN_SECONDS.
            self.connection.shutdown(socket.SHUT_WR)
            while size is None or size > 0:
                self._wait_at_most()
                piece = self.rfile.read1(1 << 20 if size is None else min(size, 1 << 20))
                if not piece:
                    return
                if size is not None:
                    size -= len(piece)
        except OSError:  # TimeoutError too: it stalled, or passed the deadline, or left: nothing more to drop
            pass

    def _json(self, status: HTTPStatus, data: dict, allow: str | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", allow)

    def _send(self, status: HTTPStatus, body: bytes, kind: str, allow: str | None = None) -> None:
        self.send_response(status)
        if allow:
            self.send_header("Allow", allow)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # one short line per request, not Apache's format
        if not getattr(self, "command", None):  # no request came (a connection left idle): what happened instead
            print(f"{self.client_address[0]}: {format % args}", flush=True)
            return
        print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}".rstrip(), flush=True)


def _top_k(values: list[str]) -> int:
    """The top_k a request asks for, from its query's (or form's) values: one whole number of at least 1,
    else a ``_Refusal``."""
    if len(values) > 1:
        raise _Refusal(HTTPStatus.BAD_REQUEST, f"top_k is given {len(values)} times; give it once")
    text = values[0].strip()
    # isascii: int() would take other scripts' digits; 9 digits: int() refuses over 4,300 (a 500 here)
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) < 1:
        raise _Refusal(HTTPStatus.BAD_REQUEST, f"top_k must be a whole number of at least 1, not {values[0]!r}")
    return int(text)


def _form(content_type: str, body: bytes) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """The files (name, content) of a multipart/form-data body, and its other fields' values by field name."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    files, fields = [], {}
    for part in message.iter_parts() if message.is_multipart() else []:
        content = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is None:
            name = part.get_param("name", header="content-disposition")
            fields.setdefault(name, []).append(content.decode(errors="replace"))
        elif filename or content:  # a browser's form sent with no file chosen holds one empty part named ""
            files.append((filename, content))
    return files, fields


def serve(run_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5, device: str = "cpu",
          pretrained: str | None = None, views: str | None = None, scales: Sequence[int] | None = None) -> None:
    """Serve the prediction page of a run (or of published weights) until Ctrl-C; ``views`` as for ``predict_images``."""
    server = PredictionServer(run_dir, host, port, top_k, pick_device(device), pretrained=pretrained, views=views,
                              scales=scales)
    source = server.config.get("weights") if pretrained else run_dir
    print(f"serving {server.config['model']} ({source}) at {server.url}  (Ctrl-C stops)", flush=True)
    with server:
        server.serve_forever()
