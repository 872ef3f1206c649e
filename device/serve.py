"""A local web page on the board: drop a scan, see the answer, every probability, the OOD note and where the
model looked.  NOT a medical device: research and education only.

    python -m device.serve [--model M] [--port 8080]          # http://127.0.0.1:8080/ on the board itself
    python -m device.serve --host 0.0.0.0                     # reachable from the network: read the README first

Standard library only (http.server). The page is one HTML document with its script inline: nothing is fetched
from elsewhere. An upload is held in memory (an anonymous memfd, never a file on disk) and decoded by the same
limited worker process as the CLI's files (device/isolate.py); no path from a request is ever opened. Limits:
an upload of at most MAX_UPLOAD_MB, REQUEST_SECONDS for each read or write on a connection (a slow client cannot
hold a thread), MAX_CONCURRENT classifications at once (more get 503 at once), MAX_CONNECTIONS open connections.
Every bad request gets a JSON {"error": ...} with a 4xx status, and the server goes on serving.
"""
from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_UPLOAD_MB = 32        # a 512x512 16-bit DICOM is 0.5 MB; a phone photo of a film a few MB
REQUEST_SECONDS = 10      # per socket read or write
MAX_CONCURRENT = 2        # classifications at once (a Pi has 4 cores; the decode worker takes one file at a time)
QUEUE_SECONDS = 5         # how long a request waits for a free slot before 503
MAX_CONNECTIONS = 64


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = MAX_CONNECTIONS  # the listen backlog (5 by default: a burst of 20 clients overflowed it)

    def __init__(self, address, classifier, max_upload_mb=MAX_UPLOAD_MB, max_concurrent=MAX_CONCURRENT,
                 request_seconds=REQUEST_SECONDS):
        super().__init__(address, Handler)
        self.classifier = classifier
        self.request_seconds = request_seconds
        self.max_upload = int(max_upload_mb * (1 << 20))
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.served = 0

    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):  # too many open connections: close this one at once
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class Handler(BaseHTTPRequestHandler):
    server_version = "mri-edge"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.request_seconds  # every read and write on this connection
        super().setup()

    def log_message(self, fmt, *args):  # one line per request on stderr, without the client's raw request line
        sys.stderr.write(f"{self.address_string()} {self.command} {self.path[:60]!r} {args[1] if len(args) > 1 else ''}\n")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                                    "script-src 'unsafe-inline'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def do_GET(self):
        if self.path in ("/", "/index.html"):
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif self.path == "/health":
            self._json(200, {"ok": True, "model": self.server.classifier.model_path.name})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/classify":
            self._json(404, {"error": "not found"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._json(411, {"error": "send the scan as the request body, with its Content-Length"})
            return
        n = int(length)
        if n == 0:
            self._json(400, {"error": "empty upload"})
            return
        if n > self.server.max_upload:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._json(413, {"error": f"upload of {n:,} bytes is larger than this server's "
                                      f"{self.server.max_upload >> 20} MB limit"})
            return
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            self.close_connection = True
            self._json(408, {"error": f"the upload stalled for more than {self.server.request_seconds:g} s"})
            return
        if len(body) < n:
            self.close_connection = True
            self._json(400, {"error": f"truncated upload ({len(body):,} of {n:,} bytes)"})
            return
        if not self.server.slots.acquire(timeout=QUEUE_SECONDS):
            self._json(503, {"error": "busy: too many scans at once, try again"})
            return
        try:
            status, answer = classify_bytes(self.server.classifier, body)
        finally:
            self.server.slots.release()
        self.server.served += 1
        self._json(status, answer)


def classify_bytes(clf, data: bytes) -> tuple[int, dict]:
    """(HTTP status, answer) for an uploaded file: the CLI's --json answer plus the explanation map as a PNG."""
    from device.classify import answer_record
    from device.explain import explain, png_bytes
    from device.preprocess import ImageError

    fd = os.memfd_create("upload")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        path = f"/proc/{os.getpid()}/fd/{fd}"   # the decode worker opens it by name: no file on disk
        t0 = time.perf_counter()
        pixels, notes = clf.model_input(path)
        result = clf.assess_pixels(pixels, notes)
        ms = (time.perf_counter() - t0) * 1000
        record = answer_record(clf, result)
        e = explain(clf, pixels, int(result.probabilities.argmax()))
    except ImageError as err:
        return 400, {"error": str(err)}
    except MemoryError:
        return 400, {"error": "not enough memory to classify this scan"}
    except Exception as err:  # a bug: said as one, the server goes on
        return 500, {"error": f"internal error: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"}
    finally:
        os.close(fd)
    return 200, record | {"latency_ms": round(ms, 2), "notes": list(result.notes),
                          "explanation_png": base64.b64encode(png_bytes(e)).decode(),
                          "explained": e.label, "explain_ms": round(e.seconds * 1000, 1)}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mri-edge</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2em;text-align:center;cursor:pointer}
#drop.over{background:#eef}
#result{display:flex;gap:2em;margin-top:1.5em;flex-wrap:wrap}
#result>div:first-child{max-width:20em}
#result>div{max-width:400px}
#map{max-width:384px;image-rendering:auto}
table{border-collapse:collapse}td{padding:2px 8px}
.err{color:#a00}.note{color:#850}.small{color:#666;font-size:90%}
#history li{margin:2px 0}
</style></head><body>
<h1>Brain-MRI slice classifier</h1>
<p class="small"><b>Not a medical device.</b> Research and education only. It sorts one 2-D grayscale slice
into glioma, meningioma, no tumour or pituitary; it has not been tested on your scanner's scans.</p>
<div id="drop" tabindex="0">Drop a scan here (JPEG, PNG or DICOM), or <u>choose a file</u>
<input id="file" type="file" hidden></div>
<div id="status" class="small"></div>
<div id="result" hidden>
 <div><h2 id="label"></h2><table id="probs"></table><p id="ood" class="note"></p><p id="cost" class="small"></p></div>
 <div><img id="map" alt="where the model looked"><p class="small">Red: hiding these pixels weakens the answer
 most (occlusion of the on-device model).</p></div>
</div>
<h3>This session</h3><ol id="history" class="small"></ol>
<script>
const $ = id => document.getElementById(id);
function text(el, s) { el.textContent = s; }
async function send(file) {
  text($("status"), "classifying " + file.name + " ...");
  let r, j;
  try {
    r = await fetch("/classify", {method: "POST", body: file});
    j = await r.json();
  } catch (e) { j = {error: "no answer from the board (" + e + ")"}; r = {status: 0}; }
  const li = document.createElement("li");
  if (j.error) {
    text($("status"), ""); $("status").className = "err"; text($("status"), file.name + ": " + j.error);
    text(li, file.name + ": error: " + j.error); $("history").prepend(li); return;
  }
  $("status").className = "small"; text($("status"), file.name);
  $("result").hidden = false;
  text($("label"), j.label + " " + (100 * j.probability).toFixed(1) + "%");
  const t = $("probs"); t.replaceChildren();
  for (const [k, v] of Object.entries(j.probabilities)) {
    const tr = t.insertRow(); text(tr.insertCell(), k); text(tr.insertCell(), (100 * v).toFixed(1) + "%");
  }
  text($("ood"), j.in_distribution === false ? "Unlike the training images (OOD score " + j.ood_score +
       " > 1): the label is much less trustworthy." : "");
  text($("cost"), "answer " + j.latency_ms + " ms, map " + j.explain_ms + " ms");
  $("map").src = "data:image/png;base64," + j.explanation_png;
  text(li, file.name + ": " + j.label + " " + (100 * j.probability).toFixed(1) + "%" +
       (j.in_distribution === false ? " (unlike the training images)" : ""));
  $("history").prepend(li);
}
$("drop").onclick = () => $("file").click();
$("file").onchange = e => { for (const f of e.target.files) send(f); e.target.value = ""; };
$("drop").ondragover = e => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = e => { e.preventDefault(); $("drop").classList.remove("over");
  for (const f of e.dataTransfer.files) send(f); };
</script></body></html>
"""


def main(argv=None) -> int:
    from device.metadata import ModelError
    from device.runtime import Classifier, ClassifierOptions

    p = argparse.ArgumentParser(prog="python -m device.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a .tflite with its .json sidecar (default: the model in device/models/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                      "only; 0.0.0.0 exposes the page to the network)")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (printed)")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: the runtime's choice)")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB)
    p.add_argument("--max-concurrent", type=int, default=MAX_CONCURRENT, help="classifications at once")
    a = p.parse_args(argv)
    if not 0 <= a.port <= 65535 or a.max_upload_mb <= 0 or a.max_concurrent < 1:
        print("error: --port 0..65535, --max-upload-mb > 0 and --max-concurrent >= 1", file=sys.stderr)
        return 2
    try:
        clf = Classifier(a.model, ClassifierOptions(threads=a.threads))
        server = Server((a.host, a.port), clf, a.max_upload_mb, a.max_concurrent)
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on {a.host}:{a.port} ({e.strerror or e})", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    print(f"serving {clf.model_path.name} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    if not loopback:
        print("note: listening beyond this machine: anyone who can reach this port can upload scans and read the "
              "answers; there is no login and no encryption", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        clf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
