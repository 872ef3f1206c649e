"""The web page (device/serve.py): plain HTTP against its limits, answers equal to the CLI's, a load test, and the
page itself driven in headless Chromium (skipped, and said so, where Chromium is not installed)."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.device.conftest import ROOT, classify


def _scan(path, seed):
    g = np.zeros((80, 64), np.uint8)
    g[10:70, 8:56] = np.random.default_rng(seed).integers(20, 230, (60, 48), dtype=np.uint8)
    Image.fromarray(g).save(path)
    return path


@pytest.fixture
def server(ood_model):
    from device.runtime import Classifier
    from device.serve import Server

    clf = Classifier(ood_model)
    srv = Server(("127.0.0.1", 0), clf, max_upload_mb=1, max_concurrent=2, request_seconds=1.5)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    clf.close()


def post(srv, body: bytes, path="/classify", headers=None):
    """(status, JSON answer); (413, None) when the server closed the connection on an oversize body before the
    client had finished sending it (it answers 413 without reading the body; the client may see the close first)."""
    c = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    try:
        c.request("POST", path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
    except (BrokenPipeError, ConnectionResetError):
        assert len(body) > srv.max_upload, "the connection broke on an upload within the cap"
        return 413, None
    finally:
        c.close()
    return r.status, json.loads(data) if data else None


def test_the_page_loads_and_says_it_is_not_a_medical_device(server):
    c = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    c.request("GET", "/")
    r = c.getresponse()
    page = r.read().decode()
    assert r.status == 200 and "Not a medical device" in page and "<script>" in page
    assert "http" not in page.split("<script>")[1]   # nothing fetched from elsewhere


def test_bad_uploads_get_a_4xx_and_one_clear_message_and_the_server_goes_on(server, tmp_path):
    good = _scan(tmp_path / "g.png", 0).read_bytes()
    cases = [
        (b"x" * (1 << 20 + 1), 413, "larger than"),          # over the 1 MB cap of this server
        (b"just text, no picture", 400, "not an image"),
        (good[: len(good) // 2], 400, "truncated"),
        (b"", 400, "empty upload"),
    ]
    for body, status, says in cases:
        code, answer = post(server, body)
        assert code == status and (answer is None or says in answer["error"]), (code, answer)
    assert post(server, good, "/elsewhere")[0] == 404
    for p in ("/../../etc/passwd", "/%2e%2e/etc/passwd", "/etc/passwd"):
        c = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        c.request("GET", p)
        assert c.getresponse().status == 404
    code, answer = post(server, good)
    assert code == 200 and answer["label"] in ("glioma", "meningioma", "notumor", "pituitary")


def test_a_truncated_or_stalled_request_does_not_hold_the_server(server, tmp_path):
    host, port = server.server_address[:2]
    s = socket.create_connection((host, port))
    s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"\x89PNG" * 10)
    s.close()                                     # truncated: the client went away
    stalled = socket.create_connection((host, port))
    stalled.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
    t0 = time.monotonic()
    reply = stalled.recv(4096)                    # the server gives up after its 1.5 s request timeout
    stalled.close()
    assert b" 408 " in reply.split(b"\r\n")[0] and time.monotonic() - t0 < 30, reply[:100]
    code, _ = post(server, _scan(tmp_path / "g.png", 1).read_bytes())
    assert code == 200


def test_20_concurrent_uploads_get_the_clis_answers(server, ood_model, tmp_path):
    files = [_scan(tmp_path / f"s{i:02d}.png", i) for i in range(20)]
    code, out, err = classify("--model", ood_model, "--json", tmp_path)
    cli = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda f: post(server, f.read_bytes()), files))
    keys = ("label", "probability", "probabilities", "in_distribution", "ood_score")
    for f, (status, a) in zip(files, answers):
        assert status == 200, a
        assert {k: a[k] for k in keys} == {k: cli[f.name][k] for k in keys}, f.name
        assert a["explanation_png"] and a["explained"] == max(a["probabilities"], key=a["probabilities"].get)


def _rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_1000_mixed_requests_from_20_clients_leave_memory_flat(ood_model, tmp_path):
    """The load test of issue 41: a separate server process, 1,000 requests (good scans, non-images, oversize and
    truncated uploads) from 20 clients; every good answer equals the CLI's, and the server's memory does not grow
    after the first 200 (its RSS before and after is printed)."""
    p = subprocess.Popen([sys.executable, "-m", "device.serve", "--model", str(ood_model), "--port", "0",
                          "--max-upload-mb", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        srv = type("S", (), {"server_address": ("127.0.0.1", port), "max_upload": 1 << 20})
        good = [_scan(tmp_path / f"s{i}.png", i) for i in range(10)]
        _, out, _ = classify("--model", ood_model, "--json", tmp_path)
        cli = {Path(r["path"]).name: r["probabilities"] for r in map(json.loads, out.splitlines())}
        bad = [b"no picture here", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, b"x" * ((1 << 20) + 10)]

        def one(i):
            if i % 4 == 3:
                return post(srv, bad[i % 3])[0], None
            f = good[i % 10]
            code, a = post(srv, f.read_bytes())
            return code, (a["probabilities"] == cli[f.name]) if code == 200 else False

        with ThreadPoolExecutor(20) as pool:
            warm = list(pool.map(one, range(200)))
            before = _rss_mb(p.pid)
            rest = list(pool.map(one, range(200, 1000)))
            after = _rss_mb(p.pid)
        print(f"server RSS after 200 requests {before:.1f} MB, after 1,000 {after:.1f} MB")
        results = warm + rest
        assert all(ok for code, ok in results if ok is not None), "a good upload got another answer than the CLI's"
        assert {code for code, ok in results if ok is None} <= {400, 413}
        assert sum(code == 200 for code, _ in results) == 750
        assert after - before < 15, (before, after)
        assert p.poll() is None
    finally:
        p.terminate()
        p.wait(10)


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER),
                    reason="SKIPPED browser test: Chromium not installed (apt-get install chromium chromium-driver)")
def test_the_page_in_a_real_browser_shows_the_answer_and_the_map(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="SKIPPED browser test: selenium not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        host, port = server.server_address[:2]
        driver.get(f"http://{host}:{port}/")
        assert "Not a medical device" in driver.page_source
        scan = _scan(tmp_path / "phantom.png", 5)
        driver.find_element(By.ID, "file").send_keys(str(scan))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "label").text.strip())
        label = driver.find_element(By.ID, "label").text
        assert label.split()[0] in ("glioma", "meningioma", "notumor", "pituitary", "uncertain")
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("const i = document.getElementById('map'); return i.complete && "
                                       "i.naturalWidth > 0"))
        assert "phantom.png" in driver.find_element(By.ID, "history").text
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not a scan")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(driver, 60).until(lambda d: "not an image" in d.find_element(By.ID, "status").text)
        out = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "serve.png"))
    finally:
        driver.quit()
