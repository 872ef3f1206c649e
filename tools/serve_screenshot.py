"""The README's screenshot of the web page: the shipped model, a synthetic phantom (no patient data), headless
Chromium (Debian's chromium + chromium-driver, selenium from requirements-dev.txt).

    .venv-device/bin/python tools/serve_screenshot.py docs/serve.png
"""
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def phantom_png(path: Path, clf) -> Path:
    """The first of a few pituitary phantoms whose map shows something (the shipped model is sure of most)."""
    from train.phantom import phantom  # numpy + Pillow only

    for seed in range(40):
        x = phantom("pituitary", np.random.default_rng([5, seed]), 224)
        if clf.explain(x).heatmap.max() > 1.0:
            break
    Image.fromarray(x).save(path)
    return path


def main(out: str) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from device.runtime import Classifier
    from device.serve import Server

    clf = Classifier()
    srv = Server(("127.0.0.1", 0), clf)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            driver.get("http://127.0.0.1:%d/" % srv.server_address[1])
            driver.find_element(By.ID, "file").send_keys(str(phantom_png(Path(tmp) / "phantom_slice.png", clf)))
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "label").text.strip())
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "const i = document.getElementById('map'); return i.complete && i.naturalWidth > 0"))
            driver.save_screenshot(out)
    finally:
        driver.quit()
        srv.shutdown()
        clf.close()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/serve.png"))
