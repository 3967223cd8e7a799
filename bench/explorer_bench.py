"""``zfclient explore`` in a real headless Chromium: the issue's budgets, measured with the browser's
Performance and Resource Timing APIs, on the bundled model and a top-9 report of layers 1-5 over the
10,000 CIFAR-10 test images (built once into out/explorer-bench/report, reused after).

- layer page: from navigation to its first screen drawn (every visible tile loaded; the page's
  ``zf-ready`` mark), and the bytes transferred by then (``transferSize`` of the page and of every
  resource that ended before the mark), the slowest of three visits (sorted by channel, activation,
  purity); budget < 1 s and <= 300 KB;
- unit page: navigation to ``zf-ready`` (patches, reconstructions, source images); budget < 0.5 s;
- live: a 32x32 image dropped on the page (a real ``drop`` event) to its strongest unit's three
  reconstructions loaded (``zf-drop`` to ``zf-live-ready``); budget < 1 s.

Every page is measured on its first visit with the browser's cache emptied, and the explorer's own
cache cold for that page (each unit and image is a new one; a layer page's tiles are the report's
files). The machine's load average is recorded beside the figures: other work on it slows every
number. Figures go to out/explorer_bench.json; with --screenshots DIR, a screenshot of each page
(docs/explorer-*.png).

    python bench/explorer_bench.py [--screenshots docs]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "client"))
from browser_testing import console_errors, headless  # noqa: E402  (the tests' Chromium)

from zfnet.client import report  # noqa: E402
from zfnet.client.api import Client  # noqa: E402
from zfnet.client.explore import app  # noqa: E402
from zfnet.client.explore.explorer import Explorer  # noqa: E402

MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
DATA = ROOT.parent / "shared" / "data" / "cifar10" / "test"
OUT = ROOT / "out"
REPORT = OUT / "explorer-bench" / "report"
LAYERS = [1, 2, 3, 4, 5]
SORTS = ("channel", "value", "purity")  # each layer page is measured once per order (different tiles first)
BUDGETS = {"layer_s": 1.0, "layer_bytes": 300_000, "unit_s": 0.5, "live_s": 1.0}
TIMEOUT = 120
READY = "return document.body.dataset.ready"
SENT = (
    "const mark = performance.getEntriesByName('zf-ready')[0].startTime;"
    "return [mark, performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
    ".filter(e => e.responseEnd <= mark).reduce((sum, e) => sum + e.transferSize, 0)];"
)
DROP = """
const [name, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/png" }));
document.querySelector(".drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""
LIVE = "const m = performance.getEntriesByName('zf-live-ready')[0]; return m ? m.startTime - performance.getEntriesByName('zf-drop')[0].startTime : null;"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def build_report() -> float:
    """The 10,000-image top-9 report of layers 1-5 (once); seconds it took (0: it was there)."""
    if (REPORT / "manifest.json").is_file() and json.loads((REPORT / "manifest.json").read_text())["images_read"] == 10_000:
        return 0.0
    began = time.perf_counter()
    with Client() as client:
        result = client.top(MODEL, client.dataset(DATA), LAYERS)
    report.write(result, REPORT, report.Job(MODEL.name, "cifar10/test", time.perf_counter() - began))
    return time.perf_counter() - began


def wait(driver, script: str):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(script)


def visit(driver, url: str) -> tuple[float, int]:
    """(seconds to the first screen, bytes transferred by then) of a first visit with an empty cache."""
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.get(url)
    if wait(driver, READY) != "1":
        raise RuntimeError(f"{url}: {driver.find_element('css selector', 'main').text}")
    mark, sent = driver.execute_script(SENT)
    errors = console_errors(driver)
    if errors:
        raise RuntimeError(f"{url}: console errors {errors}")
    return mark / 1000, int(sent)


def shoot(driver, path: Path) -> None:
    """A screenshot of the window, in 128 colours (small enough to commit)."""
    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--screenshots", type=Path, help="folder for a screenshot of each page (docs)")
    args = parser.parse_args()
    built = build_report()
    tests = sorted((DATA / "cat").iterdir())[:5] + sorted((DATA / "ship").iterdir())[:5]
    with Client() as client:
        explorer = Explorer(client, [str(MODEL)], [REPORT])
        key = next(iter(explorer.reports))
        layers = list(explorer.reports[key].layers)
        with app.running(explorer) as url, headless(1280, 860) as driver:
            driver.get(url)  # the browser and the explorer started; nothing of what is measured is cached
            wait(driver, READY)
            load = os.getloadavg()[0]
            visits = {layer: [visit(driver, f"{url}layer?report={key}&layer={layer}&sort={sort}") for sort in SORTS] for layer in layers}
            layer_pages = {layer: max(runs) for layer, runs in visits.items()}  # the slowest of its visits, with its bytes
            units = [(layer, channel) for layer in layers for channel in (3, 17, 30)]
            unit_pages = {f"{layer}/{channel}": visit(driver, f"{url}unit?report={key}&layer={layer}&channel={channel}")[0] for layer, channel in units}
            live: dict[str, float] = {}
            driver.get(url + "live")
            wait(driver, READY)
            for image in tests:
                driver.execute_script(DROP, image.name, base64.b64encode(image.read_bytes()).decode())
                live[f"{image.parent.name}/{image.name}"] = wait(driver, LIVE) / 1000
            if args.screenshots:
                shots = {
                    "model": "", "layer": f"layer?report={key}&layer=pool5&sort=purity", "unit": f"unit?report={key}&layer=pool5&channel=17&method=guided",
                    "compare": f"compare?layer=relu3&channel=17&a={key}&b={key}&ma=deconvnet&mb=guided",
                }
                args.screenshots.mkdir(parents=True, exist_ok=True)
                for name, path in shots.items():
                    driver.get(url + path)
                    wait(driver, READY)
                    if name == "model":
                        wait(driver, "return document.body.dataset.fields")
                    shoot(driver, args.screenshots / f"explorer-{name}.png")
                driver.get(url + "live")
                wait(driver, READY)
                driver.execute_script(DROP, tests[0].name, base64.b64encode(tests[0].read_bytes()).decode())
                wait(driver, LIVE)
                driver.execute_script("document.querySelector('.maps').scrollIntoView()")
                shoot(driver, args.screenshots / "explorer-live.png")
    figures = {
        "machine": machine(), "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "browser": "headless Chromium (Debian), 1280x860, cache emptied before each page",
        "report": {"images": 10_000, "layers": layers, "k": 9, "built_s": round(built, 1)},
        "layer_page_s": {k: round(v[0], 3) for k, v in layer_pages.items()}, "layer_page_bytes": {k: v[1] for k, v in layer_pages.items()},
        "unit_page_s": {k: round(v, 3) for k, v in unit_pages.items()}, "live_reconstruction_s": {k: round(v, 3) for k, v in live.items()},
        "budgets": BUDGETS,
    }
    worst = {
        "layer_s": max(v[0] for v in layer_pages.values()), "layer_bytes": max(v[1] for v in layer_pages.values()),
        "unit_s": max(unit_pages.values()), "live_s": max(live.values()),
    }
    figures["worst"] = {k: round(v, 3) for k, v in worst.items()}
    figures["median"] = {
        "layer_s": round(statistics.median(v[0] for v in layer_pages.values()), 3), "unit_s": round(statistics.median(unit_pages.values()), 3),
        "live_s": round(statistics.median(live.values()), 3),
    }
    figures["within_budgets"] = all(worst[k] <= BUDGETS[k] for k in BUDGETS)
    OUT.mkdir(exist_ok=True)
    (OUT / "explorer_bench.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
