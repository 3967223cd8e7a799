"""``zfclient top``: the report agrees with the Python client, shards merged and a resumed job agree
with one run, bad input ends in one line; the HTML report opens in a real headless Chromium."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser_testing import console_errors, headless
from cli_testing import invoke, ok
from PIL import Image
from selenium.webdriver.support.ui import WebDriverWait
from typer.testing import Result

from zfnet.client import report as report_module
from zfnet.client.api import Client
from zfnet.errors import FailedPrecondition
from zfnet.topk import TopK

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
SAMPLES = ROOT / "samples" / "cifar10"
JOB = ["--model", str(MODEL), "--layer", "1", "--layer", "6", "--channels", "0-2,5", "--k", "4"]


class Interrupt(Exception):
    pass


def top(*args: object) -> Result:
    return invoke("top", *args)


def layers_of(manifest: dict) -> dict:
    return {name: {ch: [(e["index"], e["value"], e["location"], e["patch"]) for e in info["top"]] for ch, info in layer["channels"].items()}
            for name, layer in manifest["layers"].items()}


class Links(HTMLParser):
    """A page's links (``src`` and ``href``, their fragments apart), its element ids and its images' attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.fragments: list[tuple[str, str]] = []  # (page, id); page "" for this page
        self.ids: set[str] = set()
        self.images: list[dict[str, str | None]] = []  # each with "linked": "yes" when inside a link
        self.headings: list[str] = []
        self._links_open = 0
        self._heading: list[str] | None = None

    def handle_endtag(self, tag) -> None:
        self._links_open -= tag == "a"
        if tag == "h3" and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data) -> None:
        if self._heading is not None:
            self._heading.append(data)

    def handle_starttag(self, tag, attrs) -> None:
        self._links_open += tag == "a"
        if tag == "h3":
            self._heading = []
        for k, v in attrs:
            if k in ("src", "href") and v:
                page, _, fragment = v.partition("#")
                self.links += [page] if page else []
                self.fragments += [(page, fragment)] if fragment else []
            elif k == "id" and v:
                self.ids.add(v)
        if tag == "img":
            self.images.append({**dict(attrs), "linked": "yes" if self._links_open else "no"})


def parsed(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    ok(top(*JOB, "--data", SAMPLES, "--out", out, "--raw", "--batch-size", 48))
    return out


@pytest.mark.slow
def test_the_report_holds_what_the_client_computes(report) -> None:
    manifest = json.loads((report / "manifest.json").read_text())
    with Client() as client:
        result = client.top(MODEL, client.dataset(SAMPLES), [1, 6], k=4, channels=[0, 1, 2, 5])
    assert list(manifest["layers"]) == ["pool1", "relu6"] and manifest["images_read"] == 200 and manifest["skipped_count"] == 0
    for layer, per_channel in result.entries.items():
        info = manifest["layers"][layer]
        assert (report / info["page"]).is_file() and all((report / s).is_file() for s in info["sheets"])
        for channel, entries in per_channel.items():
            listed = info["channels"][str(channel)]
            assert [(e["index"], e["value"], e["class"], e["path"]) for e in listed["top"]] == [
                (e.index, e.value, result.images[e.index].label, result.images[e.index].path) for e in entries]
            np.testing.assert_array_equal(np.load(report / listed["npy"]), np.stack([e.reconstruction for e in entries]))
            block = Image.open(report / listed["png"])
            width, height = report_module.tile_size(entries)
            assert block.size == (2 * (2 * width + 2) + 10, 2 * height + 2)  # two 2x2 grids side by side, no title (the page's heading has it)
    assert TopK.load(report / "state.npz").covered == [(0, 200)]
    for page in [report / "index.html", *report.glob("layer-*.html")]:
        parser = parsed(page)
        assert parser.links and all((report / link).is_file() for link in parser.links), page
        assert all(fragment in parsed(report / target if target else page).ids for target, fragment in parser.fragments), page
        assert not re.search(r"(https?:)?//", " ".join(parser.links))  # nothing from the network


@pytest.mark.slow
def test_the_report_is_light_lazy_and_linked(report) -> None:
    """A light index (tiles, not sheets), lazy pictures of known size, a channel jump list, links to every
    sheet and to the next layer, clickable pictures, one title per channel."""
    manifest = json.loads((report / "manifest.json").read_text())
    index = parsed(report / "index.html")
    sheets = [s for info in manifest["layers"].values() for s in info["sheets"]]
    assert set(sheets) <= set(index.links) and not [i for i in index.images if "sheet-" in str(i["src"])]
    assert (report / "index.html").stat().st_size < 20_000 and all("tile-" in str(i["src"]) for i in index.images)
    pages = {layer: parsed(report / info["page"]) for layer, info in manifest["layers"].items()}
    for (layer, info), following in zip(manifest["layers"].items(), [*list(manifest["layers"])[1:], None]):
        page = pages[layer]
        assert all(i["loading"] == "lazy" and i["width"] and i["height"] and i["linked"] == "yes" for i in page.images + index.images)
        assert [f for t, f in page.fragments if not t] == [f"ch{c}" for c in info["channels"]]  # the jump list, every channel
        assert set(info["sheets"]) <= set(page.links)
        assert (manifest["layers"][following]["page"] in page.links) if following else True
        assert page.headings == [f"channel {c}" for c in info["channels"]]  # one title per channel, none inside its picture
    assert "layer-pool1.html" in pages["relu6"].links  # and back


def test_a_rerun_replaces_the_folder_whole_and_never_a_folder_of_other_files(tmp_path) -> None:
    out = tmp_path / "report"
    with Client() as client:
        dataset = client.dataset(SAMPLES, 0, 20)
        first = client.top(MODEL, dataset, [1], k=2, channels=[0, 1])
        second = client.top(MODEL, dataset, [2], k=2, channels=[0])
    report_module.write(first, out, report_module.Job(MODEL.name, "samples"))
    assert (out / "layer-pool1.html").is_file() and (out / "pool1" / "tile-0001.png").is_file()
    report_module.write(second, out, report_module.Job(MODEL.name, "samples"))
    assert sorted(p.name for p in out.iterdir()) == ["images", "index.html", "layer-pool2.html", "manifest.json", "pool2", "state.npz"]
    assert list(json.loads((out / "manifest.json").read_text())["layers"]) == ["pool2"] and TopK.load(out / "state.npz").layers.keys() == {"pool2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # nothing left beside it

    (out / "notes.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match="holds notes.txt, which a top report does not write"):
        report_module.write(first, out, report_module.Job(MODEL.name, "samples"))
    result = top("--model", MODEL, "--layer", "1", "--data", SAMPLES, "--out", out)
    assert result.exit_code == 1 and "holds notes.txt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "mine" and (out / "layer-pool2.html").is_file()  # untouched


@pytest.mark.slow
def test_json_shards_merge_and_resume_give_the_single_runs_report(tmp_path, report) -> None:
    single = layers_of(json.loads((report / "manifest.json").read_text()))
    shards = [tmp_path / "a", tmp_path / "b"]
    ok(top(*JOB, "--data", SAMPLES, "--out", shards[0], "--stop", 90, "--scan-only"))
    ok(top(*JOB, "--data", SAMPLES, "--out", shards[1], "--start", 90, "--scan-only"))
    assert not (shards[0] / "index.html").exists() and (shards[0] / "state.npz").is_file()
    merged = top("--model", MODEL, "--data", SAMPLES, "--merge", shards[1], "--merge", shards[0], "--out", tmp_path / "merged", "--json")
    ok(merged)
    assert layers_of(json.loads(merged.stdout)) == single

    out = tmp_path / "resumed"
    with Client() as client:
        def interrupt(state: TopK) -> None:
            state.save(out / "partial-state.npz")
            raise Interrupt
        with pytest.raises(Interrupt):
            client.top_scan(MODEL, client.dataset(SAMPLES, batch_size=32), [1, 6], 4, "max", [0, 1, 2, 5], checkpoint_every=64, on_checkpoint=interrupt)
    assert TopK.load(out / "partial-state.npz").covered == [(0, 64)]
    ok(top("--model", MODEL, "--data", SAMPLES, "--out", out, "--resume"))
    assert layers_of(json.loads((out / "manifest.json").read_text())) == single
    assert not (out / "partial-state.npz").exists()


def test_a_scan_whose_server_stops_says_how_to_resume_and_resuming_works(tmp_path, report, monkeypatch) -> None:
    from zfnet.server.app import create_server

    single = layers_of(json.loads((report / "manifest.json").read_text()))
    out = tmp_path / "out"
    server, port, _ = create_server("127.0.0.1:0")
    save = TopK.save

    def checkpoint_then_stop(state: TopK, path: Path) -> None:  # the server goes away just after the first checkpoint
        save(state, path)
        if path.name == "partial-state.npz":
            server.stop(None).wait()

    monkeypatch.setattr(TopK, "save", checkpoint_then_stop)
    stopped = top(*JOB, "--data", SAMPLES, "--out", out, "--batch-size", 32, "--checkpoint-every", 32, "--server", f"127.0.0.1:{port}")
    assert stopped.exit_code == 1 and "Traceback" not in stopped.stderr
    assert "run the same command with --resume to continue" in stopped.stderr, stopped.stderr
    monkeypatch.setattr(TopK, "save", save)
    ok(top(*JOB, "--data", SAMPLES, "--out", out, "--resume"))
    assert layers_of(json.loads((out / "manifest.json").read_text())) == single


def test_bad_input_ends_in_one_line_and_leaves_no_finished_report(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("an earlier report")
    cases = [
        (["--model", MODEL, "--data", SAMPLES, "--out", out], "--layer is required"),
        ([*JOB[:-1], "0", "--data", SAMPLES, "--out", out], "--k must be positive"),
        (["--model", MODEL, "--layer", "1", "--channels", "a-b", "--data", SAMPLES, "--out", out], "must be numbers or ranges"),
        (["--model", MODEL, "--layer", "1", "--channels", "30-40", "--data", SAMPLES, "--out", out], r"channel\(s\) \[32, .*out of range"),
        (["--model", MODEL, "--layer", "1", "--data", "no-such-set", "--out", out], "neither a local image folder nor a data set"),
        (["--model", MODEL, "--layer", "1", "--data", SAMPLES, "--out", out, "--resume"], "no top-k state at"),
        (["--model", MODEL, "--layer", "1", "--method", "magic", "--data", SAMPLES, "--out", out], "unknown method 'magic'"),
    ]
    for args, message in cases:
        result = top(*args)
        assert result.exit_code == 1 and re.search(message, result.stderr), (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (out / "index.html").exists() and not (out / "manifest.json").exists()


@pytest.mark.slow
def test_the_report_opens_from_disk_in_headless_chromium(report, tmp_path) -> None:
    with headless() as driver:
        pages = [report / "index.html", *sorted(report.glob("layer-*.html"))]
        waiting = 0
        for page in pages:
            driver.get(page.as_uri())
            images = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);"
            waiting += sum(not loaded for _, loaded in driver.execute_script(images))  # below the first screen: not loaded yet
            driver.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
            WebDriverWait(driver, 20).until(lambda d: all(loaded for _, loaded in d.execute_script(images)))
            assert not console_errors(driver)
            shot = tmp_path / f"{page.stem}.png"
            assert driver.save_screenshot(str(shot))
            pixels = np.asarray(Image.open(shot).convert("L"))
            assert pixels.shape[1] >= 1000 and pixels.std() > 10  # something was drawn
        assert waiting > 0  # lazy: a page loads the pictures of its first screen only
        driver.get(pages[0].as_uri())
        driver.find_element("link text", "relu6").click()
        assert driver.current_url.endswith("layer-relu6.html") and "channel 5" in driver.page_source
        driver.find_element("link text", "previous layer: pool1").click()
        driver.find_element("css selector", "nav.jump a[href='#ch5']").click()
        assert driver.current_url.endswith("layer-pool1.html#ch5")
        top, scrolled, height = driver.execute_script("return [document.getElementById('ch5').getBoundingClientRect().top, scrollY, innerHeight]")
        assert scrolled > 0 and 0 <= top < height / 2  # scrolled to it (the last channel: as far as the page goes)


def test_resume_keeps_all_channels_of_layers_of_different_widths(tmp_path) -> None:
    """A job over every channel of pool1 (32) and pool2 (64), interrupted, resumes into the single pass."""
    out = tmp_path / "resumed"
    with Client() as client:
        dataset = client.dataset(SAMPLES, 0, 120, batch_size=40)
        whole = client.top_scan(MODEL, dataset, [1, 2], k=2)

        def interrupt(state: TopK) -> None:
            state.save(out / "partial-state.npz")
            raise Interrupt

        with pytest.raises(Interrupt):
            client.top_scan(MODEL, dataset, [1, 2], k=2, checkpoint_every=40, on_checkpoint=interrupt)
    ok(top("--model", MODEL, "--data", SAMPLES, "--stop", 120, "--out", out, "--resume", "--scan-only"))
    resumed = TopK.load(out / "state.npz")
    assert resumed.covered == [(0, 120)] and [len(t.channels) for t in resumed.layers.values()] == [32, 64]
    for name, top_ in whole.layers.items():
        np.testing.assert_array_equal(resumed.layers[name].indices, top_.indices)
        np.testing.assert_array_equal(resumed.layers[name].values, top_.values)
