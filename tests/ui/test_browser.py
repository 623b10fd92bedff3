"""The real thing: `streamlit run ui/app.py` (headless) loaded in headless Chromium.

Marked ``browser``. Needs Debian's ``chromium`` (``make browser-test`` / ``.ci/browser-test.sh``
install it with apt) and the ``playwright`` Python package (it drives the system browser; its own
browser download is not used). Skips with the reason when either is missing.

Screenshots go to ``$UI_SCREENSHOT_DIR`` (default ``artifacts/screenshots``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import planner
from planner.gpus import gpu as catalog_gpu
from ui.i18n import Translator

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Llama-3.1-8B"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_path():
    path = _chromium()
    if path is None:
        pytest.skip("no chromium on PATH: install Debian's package (`apt-get install -y chromium`, or run "
                    "`make browser-test`, which does it where apt is available)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed "
                        "(`pip install playwright`; it drives the system chromium)")
    return path


@pytest.fixture(scope="module")
def server(browser_path):
    port = _free_port()
    log = open(os.environ.get("UI_SERVER_LOG", os.devnull), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()  # only the process this fixture started
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(browser_path, server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1600})
        yield pg
        browser.close()


def _wait_rendered(page, metrics: bool = True) -> None:
    """Streamlit renders over a websocket: wait for the metrics and a chart, then for the run to end."""
    if metrics:
        page.wait_for_selector('[data-testid="stMetricValue"]', timeout=120_000)
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(1500)


def _shot(page, name: str) -> Path:
    out = Path(os.environ.get("UI_SCREENSHOT_DIR", ROOT / "artifacts" / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    page.screenshot(path=str(path), full_page=False, timeout=120_000)
    return path


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_default_plan_in_a_real_browser(page, server, lang):
    t = Translator(lang)
    page.goto(server + ("/?lang=ko" if lang == "ko" else "/"))
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=512, gradient_checkpointing=True)
    gpu = catalog_gpu("rtx-4090")
    verdict_start = t("verdict.fits", gpu=gpu.name, used="", capacity="", margin="", band="").split(":")[0]
    page.wait_for_selector(f"text={verdict_start}", timeout=120_000)
    _wait_rendered(page)
    text = page.inner_text("body")
    assert verdict_start in text
    assert MODEL in text
    assert f"{expected.trainable_params:,}" in text
    assert t("view.compare") in text and t("section.training") in text
    assert t("time.heading") in text and t("time.metric.step_flops") in text  # the time-and-cost section
    path = _shot(page, f"plan-{lang}.png")
    assert path.stat().st_size > 10_000


def test_compare_tab_in_a_real_browser(page, server):
    page.goto(server + "/?view=compare")
    page.wait_for_selector(f"text={Translator('en')('seed.heading')}", timeout=120_000)
    _wait_rendered(page, metrics=False)
    assert Translator("en")("chart.compare.title") in page.inner_text("body")
    _shot(page, "compare-en.png")


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_recommend_tab_in_a_real_browser(page, server, lang):
    t = Translator(lang)
    page.goto(server + "/?view=recommend" + ("&lang=ko" if lang == "ko" else ""))
    page.wait_for_selector(f"text={t('rec.rejected.heading')}", timeout=120_000)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=120_000)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(1500)
    text = page.inner_text("body")
    recs = planner.recommend(MODEL, ["rtx-4090"], task="classification", num_examples=5000, seq_len=512)
    assert t("rec.heading", model=MODEL, gpus=catalog_gpu("rtx-4090").name) in text
    assert t("rec.apply") in text and t(f"method.{recs[0].method}.name") in text
    assert recs[0].recommendation.inference_overhead.text(lang) in text
    _shot(page, f"recommend-{lang}.png")


def test_multi_gpu_plan_in_a_real_browser(page, server):
    """Four GPUs under ZeRO-3 with offload: the sidebar's strategy selects and the host memory show."""
    t = Translator("en")
    page.goto(server + "/?gpus=4&shard=zero3&offload=optimizer%2Bparams")
    page.wait_for_selector(f"text={t('metric.host')}", timeout=120_000)
    _wait_rendered(page)
    text = page.inner_text("body")
    expected = planner.estimate(MODEL, "lora", r=16, batch_size=1, seq_len=512, gradient_checkpointing=True, num_gpus=4,
                                sharding="zero3", offload="optimizer+params")
    assert t("setting.sharding") in text and t("sharding.zero3") in text and t("offload.optimizer+params") in text
    assert f"{expected.memory.host_bytes / 2**30:,.2f} GiB" in text
    _shot(page, "plan-multi-gpu-en.png")
