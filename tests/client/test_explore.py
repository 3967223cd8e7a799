"""``zfclient explore``: the channel lists against a brute-force count, every endpoint against what the
Python client and the report compute, bad input answered with the right status while the app keeps
serving, and the pages driven in headless Chromium against a separately started ``zfserver``."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from browser_testing import console_errors, headless
from cli_testing import invoke
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from zfnet.client import report
from zfnet.client.api import Client
from zfnet.client.explore import app, reports
from zfnet.client.explore.explorer import PER_PAGE, Explorer
from zfnet.errors import InvalidArgument, NotFound

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"
CAT = SAMPLES / "cat" / "0000.jpg"
TIMEOUT = 60
BUDGET_BYTES = 300_000  # the layer page's first screen, everything transferred


@dataclass(frozen=True)
class Reports:
    whole: Path  # layers 1 and 5 (pool1, pool5), every channel, top-9 over the 200 bundled images, deconvnet
    half: Path  # pool5 only, top-9 over the first 100 images, guided


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Reports:
    """Two top reports of the bundled model, written by :func:`report.write` as ``zfclient top`` writes them."""
    out = tmp_path_factory.mktemp("reports")
    with Client() as client:
        whole = client.top(MODEL, client.dataset(SAMPLES, batch_size=100), [1, 5])
        report.write(whole, out / "whole", report.Job(MODEL.name, "samples/cifar10"))
        half = client.top(MODEL, client.dataset(SAMPLES, 0, 100, batch_size=100), [5], method="guided")
        report.write(half, out / "half", report.Job(MODEL.name, "samples/cifar10[0:100]"))
    return Reports(out / "whole", out / "half")


@pytest.fixture(scope="module")
def explorer(made: Reports) -> Iterator[tuple[str, Explorer, Client]]:
    """The explorer over the in-process service, served on a free port: (URL, explorer, its client)."""
    with Client() as client:
        explorer = Explorer(client, [str(MODEL)], [made.whole, made.half])
        with app.running(explorer) as url:
            yield url, explorer, client


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def picture(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.body)).convert("RGB"))


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """GET (POST with ``data``) ``url``; an HTTP error status is a reply like any other."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# ---- channel lists: sorted, filtered and paged as a brute-force count says -------------------------


def test_channel_lists_sort_filter_and_page_as_counted_by_hand(made: Reports) -> None:
    loaded = reports.load(made.whole)
    listed = manifest(made.whole)["layers"]["pool5"]["channels"]
    classes = {int(c): [e["class"] for e in data["top"]] for c, data in listed.items()}
    strongest = {int(c): data["top"][0]["value"] for c, data in listed.items()}
    purity = {c: max(Counter(labels).values()) / len(labels) for c, labels in classes.items()}
    units = loaded.layers["pool5"].values()

    assert [u.channel for u in reports.select(units)] == sorted(classes)
    assert [u.channel for u in reports.select(units, "value")] == sorted(classes, key=lambda c: (-strongest[c], c))
    assert [u.channel for u in reports.select(units, "purity")] == sorted(classes, key=lambda c: (-purity[c], -strongest[c], c))
    mostly_dog = [c for c, labels in classes.items() if labels.count("dog") / len(labels) >= 0.5]
    assert [u.channel for u in reports.select(units, "channel", "dog", 0.5)] == mostly_dog
    assert [u.channel for u in reports.select(units, "channel", "dog", 1.0)] == [c for c in mostly_dog if set(classes[c]) == {"dog"}]
    assert all(loaded.unit("pool5", c).histogram()[0][1] == max(Counter(labels).values()) for c, labels in classes.items())

    pages = [reports.page_of(reports.select(units), n, 48) for n in (1, 2, 9)]
    assert [(p.number, p.pages, len(p.units), p.first) for p in pages] == [(1, 2, 48, 0), (2, 2, 16, 48), (2, 2, 16, 48)]
    with pytest.raises(InvalidArgument, match="unknown sort 'size'"):
        reports.select(units, "size")
    with pytest.raises(NotFound, match="no channel 64 of layer pool5"):
        loaded.unit("pool5", 64)


def test_a_folder_that_is_not_a_report_or_a_report_of_another_model_is_refused(made: Reports, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="has no manifest.json"):
        reports.load(tmp_path)
    result = invoke("explore", "--model", MODEL, "--report", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path} is not a finished top report" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    data = {**manifest(made.half), "model_sha256": "0" * 64, "model": "elsewhere.onnx"}
    (other / "manifest.json").write_text(json.dumps(data))
    with Client() as client:
        with pytest.raises(InvalidArgument, match=r"made with model elsewhere.onnx \(000000000000\), which is none of the --model given"):
            Explorer(client, [str(MODEL)], [other])
        with pytest.raises(InvalidArgument, match="is given twice"):
            Explorer(client, [str(MODEL)], [made.half, made.half])


# ---- the endpoints: what the client and the report compute -----------------------------------------


@pytest.mark.slow
def test_model_and_report_endpoints_agree_with_the_client_and_the_report(explorer, made: Reports) -> None:
    url, x, client = explorer
    info = client.model_info(MODEL)
    model = fetch(url + "api/model").json()
    assert [(r["name"], r["shape"], r["number"]) for r in model["layers"]] == [(r.name, list(r.shape), r.number) for r in info.layers]
    assert model["classes"] == info.classes and model["first_layer"] == "pool1"
    whole, half = (r["key"] for r in model["reports"])
    assert model["reports"][0]["layers"] == {"pool1": 32, "pool5": 64} and model["reports"][1]["method"] == "guided"

    fields = fetch(url + "api/model/fields").json()
    top = manifest(made.whole)["layers"]["pool5"]["channels"]["0"]["top"][0]["patch"]
    assert fields["pool5"] == {"size": [top[2] - top[0], top[3] - top[1]], "exact": True, "whole": False}  # the report's patch
    assert fields["conv1"] == {"size": list(client.filters(MODEL, "conv1").weights.shape[2:]), "exact": True, "whole": False}  # its kernel
    assert fields["fc8"]["whole"] and fields["sub"]["size"] == [1, 1]

    listed = manifest(made.whole)["layers"]["pool5"]
    page = fetch(url + f"api/report/{whole}/channels?layer=pool5&sort=value&channel=60").json()
    order = sorted(range(64), key=lambda c: (-listed["channels"][str(c)]["top"][0]["value"], c))
    assert [u["channel"] for u in page["units"]] == order[PER_PAGE * (page["page"] - 1) :][: PER_PAGE]
    assert 60 in [u["channel"] for u in page["units"]] and page["pages"] == 2 and page["previous_layer"] == "pool1"

    for layer, channel in (("pool1", 5), ("pool5", 17)):
        data = listed if layer == "pool5" else manifest(made.whole)["layers"]["pool1"]
        data = data["channels"][str(channel)]
        unit = fetch(url + f"api/report/{whole}/unit?layer={layer}&channel={channel}").json()
        assert [(w["index"], w["label"], w["patch"]) for w in unit["winners"]] == [(e["index"], e["class"], e["patch"]) for e in data["top"]]
        assert unit["filter"] == (layer == "pool1") and [r["name"] for r in unit["covered_by"]] == (["whole", "half"] if layer == "pool5" else ["whole"])
        block = np.asarray(Image.open(made.whole / data["png"]).convert("RGB"))  # the report's Fig. 2 block: reconstructions | patches
        patches = fetch(url + f"api/report/{whole}/patches.png?layer={layer}&channel={channel}")
        recons = fetch(url + f"api/report/{whole}/reconstructions.png?layer={layer}&channel={channel}&method=deconvnet")
        width = patches.picture().shape[1]
        np.testing.assert_array_equal(patches.picture(), block[:, -width:])
        assert np.abs(recons.picture().astype(int) - block[:, :width]).max() <= 1  # the server's Deconv again: the top job's reconstructions
        tile = fetch(url + f"api/report/{whole}/tile.png?layer={layer}&channel={channel}")
        assert tile.body == (made.whole / data["tile"]).read_bytes()
        assert patches.headers["cache-control"] == recons.headers["cache-control"] == "public, max-age=31536000, immutable"

    guided = fetch(url + f"api/report/{whole}/reconstructions.png?layer=pool5&channel=17&method=guided").picture()
    own = np.asarray(Image.open(made.half / manifest(made.half)["layers"]["pool5"]["channels"]["17"]["png"]).convert("RGB"))
    assert guided.shape[1] == own.shape[1] // 2 - 5 and not np.array_equal(guided, recons.picture())  # another method, drawn alike
    weights = client.filters(MODEL, 1).weights[5]
    shown = fetch(url + f"api/report/{whole}/filter.png?layer=pool1&channel=5").picture()
    expected = (weights - weights.min()) / (weights.max() - weights.min())
    np.testing.assert_allclose(shown[: 6 * 5 : 6, : 6 * 5 : 6] / 255, expected.transpose(1, 2, 0), atol=1 / 255)  # RGB, 6x enlarged


@pytest.mark.slow
def test_live_endpoints_agree_with_the_client(explorer) -> None:
    url, x, client = explorer
    upload = fetch(url + "api/live?name=cat.jpg", CAT.read_bytes(), {"Content-Type": "application/octet-stream"}).json()
    key = upload["key"]
    expected = client.predict(MODEL, [CAT], top_k=5).predictions[0].top
    assert [s["label"] for s in upload["top"]] == [s.label for s in expected]
    np.testing.assert_allclose([s["probability"] for s in upload["top"]], [s.probability for s in expected], rtol=1e-5)

    activation = client.activations(MODEL, [CAT], ["pool5"])["pool5"][0]
    maps = fetch(url + f"api/live/{key}/maps?layer=pool5").json()
    np.testing.assert_allclose(maps["maxima"], activation.reshape(64, -1).max(axis=1), rtol=1e-5, atol=1e-6)
    assert maps["strongest"] == int(np.argmax(activation.reshape(64, -1).max(axis=1)))
    sheet = fetch(url + f"api/live/{key}/maps.png?layer=pool5").picture()
    h, w = maps["cell"]
    columns, gap = maps["columns"], maps["gap"]
    assert sheet.shape[:2] == (-(-64 // columns) * (h + gap) - gap, columns * (w + gap) - gap)
    c = maps["strongest"]
    cell = sheet[(c // columns) * (h + gap) :][:h, (c % columns) * (w + gap) :][:w]
    peak = np.unravel_index(np.argmax(activation[c]), activation[c].shape)
    assert tuple(cell[peak[0] * (h // 4), peak[1] * (w // 4)]) == (253, 231, 37)  # the map's maximum is viridis' top

    unit = fetch(url + f"api/live/{key}/unit?layer=pool5&channel=7").json()
    for method in ("deconvnet", "guided", "backprop"):
        found = client.deconv(MODEL, [CAT], "pool5", channels=[7], method=method).reconstructions[0]
        assert unit["methods"][method] == {"activation": pytest.approx(found.activation, rel=1e-5), "location": list(found.location),
                                           "receptive_field": list(found.receptive_field)}
        shown = fetch(url + f"api/live/{key}/reconstruction.png?layer=pool5&channel=7&method={method}").picture()
        peak = np.abs(found.pixels).max()
        np.testing.assert_allclose(shown / 255, np.clip(0.5 + np.moveaxis(found.pixels, 0, -1) / (2 * peak), 0, 1), atol=1 / 255 + 1e-6)

    occlusion = client.occlusion(MODEL, [CAT], layer="pool5")
    server_map = occlusion.images[0]
    rgb = np.asarray(Image.open(CAT).convert("RGB"))
    mine = x.occlusion_map(rgb, occlusion, "pool5", server_map.channel)  # map (b) for any unit, here the server's own
    np.testing.assert_allclose(mine, server_map.layer_total, rtol=1e-4, atol=1e-3)
    for picture in (f"occlusion.png?layer=pool5&channel=7&class=dog", "invariance.png?class="):
        reply = fetch(url + f"api/live/{key}/{picture}")
        assert reply.status == 200 and reply.picture().shape[1] > 1000 and reply.picture().std() > 10


@pytest.mark.slow
def test_bad_requests_get_the_right_status_and_a_message_naming_the_problem(explorer) -> None:
    url, _, _ = explorer
    key = fetch(url + "api/model").json()["reports"][0]["key"]
    cases = {
        f"api/report/{'0' * 16}/unit?layer=pool5&channel=1": (404, "no report 0000000000000000 here"),
        f"api/report/{key}/unit?layer=pool9&channel=1": (404, "no layer 'pool9'; it covers pool1, pool5"),
        f"api/report/{key}/unit?layer=pool5&channel=99": (404, "no channel 99 of layer pool5; it tracked 0-63"),
        f"api/report/{key}/unit?layer=pool5": (400, "the query parameter 'channel' is missing"),
        f"api/report/{key}/unit?layer=pool5&channel=x": (400, "'channel' must be a number, got 'x'"),
        f"api/report/{key}/reconstructions.png?layer=pool5&channel=1&method=magic": (400, "unknown method 'magic'"),
        f"api/report/{key}/filter.png?layer=pool5&channel=1": (404, "only a first layer's units have one"),
        f"api/report/{key}/channels?layer=pool5&sort=size": (400, "unknown sort 'size'"),
        f"api/report/{key}/image/99999.png": (404, "holds no image 99999"),
        "api/live/feedface/maps?layer=pool5": (404, "no uploaded image feedface"),
        "api/nothing": (404, "nothing at /api/nothing"),
    }
    for path, (status, message) in cases.items():
        reply = fetch(url + path)
        assert (reply.status, reply.headers["content-type"]) == (status, "application/json"), path
        assert message in reply.json()["error"] and "\n" not in reply.json()["error"], (path, reply.json())
    for body, (status, message) in {b"": (400, "the upload is empty"), b"not an image": (400, "bad.jpg is not an image")}.items():
        reply = fetch(url + "api/live?name=bad.jpg", body, {"Content-Type": "application/octet-stream"})
        assert reply.status == status and message in reply.json()["error"]
    key = fetch(url + "api/live?name=cat.jpg", CAT.read_bytes()).json()["key"]
    reply = fetch(url + f"api/live/{key}/maps?layer=nope")
    assert reply.status == 404 and "nope" in reply.json()["error"]  # the server's NOT_FOUND, passed on
    assert fetch(url + "api/model").status == 200  # still serving


@pytest.mark.slow
def test_static_files_revalidate_and_json_is_never_cached(explorer) -> None:
    url, _, _ = explorer
    script = fetch(url + "static/main.js")
    assert script.status == 200 and "javascript" in script.headers["content-type"] and "etag" in script.headers
    assert fetch(url + "static/main.js", headers={"If-None-Match": script.headers["etag"]}).status == 304
    assert fetch(url + "api/model").headers["cache-control"] == "no-store"
    page = fetch(url + "layer?report=x&layer=y")
    assert page.status == 200 and b'<script type="module" src="/static/main.js">' in page.body
    assert not re.search(rb"https?://", b"".join(p.read_bytes() for p in app.STATIC.iterdir()))  # nothing from the network


# ---- the pages in a browser, the explorer a separate process over a separate zfserver ---------------


class Process:
    """A command in a subprocess, its output (stdout and stderr together) read on a thread; the first
    line matching ``ready`` gives its address."""

    def __init__(self, args: list[str], ready: str) -> None:
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.log: list[str] = []
        started = threading.Event()
        self.address = ""

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.log.append(line)
                found = re.search(ready, line)
                if found and not started.is_set():
                    self.address = found.group(1)
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        started.wait(TIMEOUT)
        assert self.address, f"{args[0]} did not start:\n" + "".join(self.log)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(TIMEOUT)


@pytest.fixture(scope="module")
def remote(made: Reports) -> Iterator[str]:
    """``zfserver --port 0`` and ``zfclient explore --server`` it, each its own process: the explorer's URL."""
    binaries = Path(sys.executable).parent
    server = Process([str(binaries / "zfserver"), "--port", "0"], r"serving on (127\.0\.0\.1:\d+)")
    explore = None
    try:
        explore = Process([str(binaries / "zfclient"), "explore", "--server", server.address, "--model", str(MODEL),
                           "--report", str(made.whole), "--report", str(made.half)], r"explorer: (http://\S+)")
        yield explore.address
    finally:
        if explore is not None:
            assert explore.stop() in (0, 130, -signal.SIGINT)
        server.stop()


def wait_until(driver, script: str, what: str):
    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(lambda d: d.execute_script(script), what)


LOADED = "return [...document.querySelectorAll('main img')].filter(i => i.loading !== 'lazy').every(i => i.complete && i.naturalWidth > 0)"


@pytest.mark.slow
def test_the_pages_in_headless_chromium_over_a_separate_zfserver(remote: str) -> None:
    with headless() as driver:
        driver.get(remote)
        wait_until(driver, "return document.body.dataset.fields", "the receptive fields")
        assert driver.find_element(By.TAG_NAME, "h1").text == "zfnet-cifar10" and driver.find_element(By.ID, "field-2").text == "5×5"  # conv1
        assert not console_errors(driver)

        driver.find_element(By.LINK_TEXT, "pool5").click()  # the first report's layer 5
        wait_until(driver, "return document.body.dataset.ready", "the layer page")
        assert driver.find_element(By.TAG_NAME, "h1").text == "pool5: 64 channels"
        sent = driver.execute_script(
            "const mark = performance.getEntriesByName('zf-ready')[0].startTime;"
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".filter(e => e.responseEnd <= mark).reduce((sum, e) => sum + e.transferSize, 0);")
        assert 0 < sent <= BUDGET_BYTES  # the first screen, a cold cache
        assert not console_errors(driver)

        driver.find_element(By.NAME, "channel").send_keys("50" + Keys.ENTER)
        wait_until(driver, "return document.body.dataset.ready && location.search.includes('channel=50')", "the jump")
        assert "page 2 of 2" in driver.page_source and driver.find_element(By.ID, "ch50").get_attribute("class") == "jumped"
        driver.find_element(By.ID, "ch50").click()

        wait_until(driver, "return document.body.dataset.ready && location.pathname == '/unit'", "the unit page")
        assert driver.find_element(By.TAG_NAME, "h1").text == "pool5 · channel 50"
        wait_until(driver, LOADED, "the unit's pictures")
        deconvnet = str(driver.find_element(By.CSS_SELECTOR, "img[alt^='reconstructions by']").get_attribute("src"))
        driver.find_element(By.CSS_SELECTOR, "input[name=method][value=guided]").click()
        wait_until(driver, "const i = document.querySelector(\"img[alt='reconstructions by guided']\"); return i && i.complete && i.naturalWidth > 0", "guided")
        guided = str(driver.find_element(By.CSS_SELECTOR, "img[alt='reconstructions by guided']").get_attribute("src"))
        assert "method=guided" in driver.current_url and "method=guided" in guided and fetch(deconvnet).body != fetch(guided).body
        assert len(driver.find_elements(By.CSS_SELECTOR, ".strip img")) == 2  # both reports cover pool5 channel 50
        assert not console_errors(driver)

        driver.get(remote + "live")
        wait_until(driver, "return document.body.dataset.ready", "the live page")
        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(CAT))
        first = wait_until(driver, "return document.body.dataset.live", "the strongest unit's reconstructions")
        assert first.startswith("pool5/") and "cat" in driver.find_element(By.CSS_SELECTOR, "table").text
        assert len(driver.find_elements(By.CSS_SELECTOR, ".recon img")) == 3
        wait_until(driver, LOADED, "the live pictures")
        sheet = driver.find_element(By.CSS_SELECTOR, ".maps img")
        scale = driver.execute_script("return arguments[0].clientWidth / arguments[0].naturalWidth", sheet)
        cell = fetch(remote + "api/live/" + driver.execute_script("return new URL(arguments[0].src).pathname.split('/')[3]", sheet) + "/maps?layer=pool5").json()
        h, w = cell["cell"]
        offset = ((3 * (w + cell["gap"]) + w / 2) * scale - sheet.size["width"] / 2, (h / 2) * scale - sheet.size["height"] / 2)
        ActionChains(driver).move_to_element_with_offset(sheet, round(offset[0]), round(offset[1])).click().perform()  # channel 3
        wait_until(driver, "return document.body.dataset.live == 'pool5/3'", "channel 3's reconstructions")
        driver.find_element(By.NAME, "occlusion").click()
        wait_until(driver, "const i = document.querySelector(\"img[alt='occlusion maps']\"); return i && i.complete && i.naturalWidth > 1000", "Fig. 7")
        assert not console_errors(driver)

        driver.get(remote + "compare?layer=pool5&channel=3")
        wait_until(driver, "return document.body.dataset.ready", "the comparison")
        headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, ".columns h2")]
        assert headings == ["whole · deconvnet", "half · guided"]
        wait_until(driver, LOADED, "the two units' pictures")
        assert len(driver.find_elements(By.CSS_SELECTOR, ".columns img")) == 4 and not driver.find_elements(By.CSS_SELECTOR, ".error")
        assert not console_errors(driver)
