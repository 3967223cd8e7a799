"""The top-k report (Zeiler & Fergus 2013, Fig. 2): per channel a block of reconstructions beside the
input patches they came from, paged sheets per layer, a static HTML report and a manifest.

Everything is written under one folder and opens from disk: ``index.html`` links a page per layer,
pages use relative paths only, no script, no network; every picture loads lazily. Layout::

    index.html  manifest.json  state.npz
    layer-<layer>.html
    <layer>/channel-0003.png   <layer>/tile-0003.png   <layer>/sheet-01.png
    <layer>/optimised-0003.png   (with visualisations: the channel's optimised image, at the input's size)
    images/<index>.png          (each winning image once, as the model saw it)
    raw/<layer>/channel-0003.npy  (with raw=True: (k, C, H, W) float32 reconstructions, rank order)

A channel's tile is its strongest patch beside that patch's reconstruction, small: what the index,
the jump lists and ``zfclient explore`` show of a channel at a glance. A report is written into a
folder beside ``out`` and swapped in whole, so a re-run leaves nothing of the report before it.
Given feature visualisations (``zfclient top --visualise``), each channel's optimised image sits
beside its block on the layer page.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from zfnet.client.names import safe_name
from zfnet.client.render import for_display
from zfnet.errors import FailedPrecondition
from zfnet.wire.common import Box
from zfnet.wire.top import Entry, TopImage, TopResult
from zfnet.wire.visualise import VisualisedUnit, VisualiseResult

GREY = 128  # outside the image, a patch is grey (the paper's border patches)
TILE = 64  # a patch is enlarged (nearest neighbour) to about this many pixels
GAP, BLOCK_GAP = 2, 10
CHANNELS_PER_SHEET = 16
DISPLAY_WIDTH = 640  # a channel's block is shown enlarged by a whole factor to about this width
INDEX_TILES = 12  # tiles per layer on the index page
BACKGROUND, EMPTY = (255, 255, 255), (225, 225, 225)
# What a report folder holds: a re-run replaces a folder of these names only (and layer folders of these pictures)
REPORT_FILES = re.compile(r"(index\.html|manifest\.json|(partial-)?state\.npz(\.writing)?|layer-.+\.html)")
LAYER_PICTURES = re.compile(r"(channel|tile|sheet|optimised)-\d+\.png")


@dataclass(frozen=True)
class Job:
    """What the report says about the job that produced it."""

    model: str  # display name
    data: str  # display name of the data set
    seconds: float = 0.0


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """A model input (C, H, W) in 0..255 -> (H, W, 3) uint8."""
    rgb = np.moveaxis(pixels, 0, -1)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.clip(np.rint(rgb[..., :3]), 0, 255).astype(np.uint8)


def padded_crop(rgb: np.ndarray, box: tuple[int, int, int, int], fill: int = GREY) -> np.ndarray:
    """(H, W, 3) cut to ``box`` (top, left, bottom, right; exclusive), grey where the box leaves the image."""
    top, left, bottom, right = box
    height, width = rgb.shape[:2]
    out = np.full((bottom - top, right - left, 3), fill, np.uint8)
    y0, y1, x0, x1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = rgb[y0:y1, x0:x1]
    return out


def patch(entry: Entry, image: TopImage) -> np.ndarray:
    """The input patch under the entry's whole receptive field."""
    return padded_crop(to_rgb(image.pixels), entry.patch)


def reconstruction(entry: Entry) -> np.ndarray:
    """The reconstruction over the same patch, zero at mid-grey."""
    return padded_crop(for_display(entry.reconstruction), entry.patch)


def grid(tiles: list[np.ndarray | None], k: int, size: tuple[int, int]) -> Image.Image:
    """k tiles (None: an empty slot) in a square-ish grid, each enlarged to ``size`` (w, h)."""
    columns = math.ceil(math.sqrt(k))
    rows = math.ceil(k / columns)
    width, height = size
    canvas = Image.new("RGB", (columns * width + (columns - 1) * GAP, rows * height + (rows - 1) * GAP), BACKGROUND)
    for i in range(k):
        r, c = divmod(i, columns)
        tile = tiles[i] if i < len(tiles) else None
        picture = Image.fromarray(tile).resize(size, Image.Resampling.NEAREST) if tile is not None else Image.new("RGB", size, EMPTY)
        canvas.paste(picture, (c * (width + GAP), r * (height + GAP)))
    return canvas


def tile_size(entries: list[Entry]) -> tuple[int, int]:
    """Display size of one tile: the patch enlarged by a whole factor to about TILE pixels."""
    return enlarged(entries[0].patch) if entries else (TILE, TILE)


def enlarged(box: Box) -> tuple[int, int]:
    """The size (w, h) of a patch of ``box`` enlarged by a whole factor to about TILE pixels."""
    top, left, bottom, right = box
    height, width = bottom - top, right - left
    scale = max(1, round(TILE / max(height, width)))
    return (width * scale, height * scale)


def channel_block(entries: list[Entry], images: dict[int, TopImage], k: int, size: tuple[int, int]) -> Image.Image:
    """The paper's Fig. 2 block for one channel: reconstructions (left) beside their input patches (right)."""
    recons = grid([reconstruction(e) for e in entries], k, size)
    patches = grid([patch(e, images[e.index]) for e in entries], k, size)
    block = Image.new("RGB", (recons.width + BLOCK_GAP + patches.width, recons.height), BACKGROUND)
    block.paste(recons, (0, 0))
    block.paste(patches, (recons.width + BLOCK_GAP, 0))
    return block


def pair(left: np.ndarray, right: np.ndarray) -> Image.Image:
    """Two (H, W, 3) pictures of one size side by side, GAP white pixels between, at their own resolution."""
    height, width = left.shape[:2]
    out = Image.new("RGB", (2 * width + GAP, height), BACKGROUND)
    out.paste(Image.fromarray(left), (0, 0))
    out.paste(Image.fromarray(right), (width + GAP, 0))
    return out


def channel_tile(entry: Entry, image: TopImage) -> Image.Image:
    """A channel at a glance: its strongest patch beside that patch's reconstruction."""
    return pair(patch(entry, image), reconstruction(entry))


def _labelled(picture: Image.Image, label: str, size: int = 13) -> Image.Image:
    font = _font(size)
    strip = size + 8
    out = Image.new("RGB", (max(picture.width, int(font.getlength(label)) + 4), picture.height + strip), BACKGROUND)
    ImageDraw.Draw(out).text((2, 3), label, fill=(0, 0, 0), font=font)
    out.paste(picture, (0, strip))
    return out


def sheets(blocks: list[tuple[int, Image.Image]], title: str, per_sheet: int = CHANNELS_PER_SHEET) -> list[Image.Image]:
    """Blocks (channel, picture) laid out ``per_sheet`` to a page, each labelled, under a title line."""
    pages = [blocks[i : i + per_sheet] for i in range(0, len(blocks), per_sheet)] or [[]]
    out = []
    for number, page in enumerate(pages, 1):
        labelled = [_labelled(picture, f"channel {channel}") for channel, picture in page]
        columns = min(4, max(1, len(labelled)))
        rows = math.ceil(len(labelled) / columns) if labelled else 0
        cell_w = max((p.width for p in labelled), default=200) + 16
        cell_h = max((p.height for p in labelled), default=0) + 12
        head = _font(15)
        lines = [f"{title}  (page {number}/{len(pages)})", "each channel: reconstructions (left) beside the input patches they came from (right), strongest first"]
        top = 14 + 22 * len(lines)
        width = max(columns * cell_w + 16, *(int(head.getlength(line)) + 24 for line in lines))
        sheet = Image.new("RGB", (width, top + rows * cell_h + 8), BACKGROUND)
        draw = ImageDraw.Draw(sheet)
        for i, line in enumerate(lines):
            draw.text((12, 8 + 22 * i), line, fill=(0, 0, 0) if i == 0 else (70, 70, 70), font=head if i == 0 else _font(13))
        for i, picture in enumerate(labelled):
            r, c = divmod(i, columns)
            sheet.paste(picture, (12 + c * cell_w, top + r * cell_h))
        out.append(sheet)
    return out


def manifest_entry(entry: Entry, image: TopImage) -> dict:
    return {
        "rank": entry.rank + 1, "index": entry.index, "path": image.path, "class": image.label, "value": entry.value,
        "activation": entry.activation, "location": list(entry.location),
        "receptive_field": list(entry.receptive_field), "patch": list(entry.patch),
    }


def check_replaceable(out: Path) -> None:
    """Refuse to write a report over a folder that holds anything a report does not write: a re-run
    replaces the folder whole, and must never take a user's other files with it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FailedPrecondition(f"--out {out} is a file; give a folder for the report")
    for item in sorted(out.iterdir()):
        ours = (
            REPORT_FILES.fullmatch(item.name) if item.is_file()
            else item.name in ("images", "raw") or all(LAYER_PICTURES.fullmatch(p.name) for p in item.iterdir())
        )
        if not ours:
            raise FailedPrecondition(
                f"--out {out} holds {item.name}, which a top report does not write; a report replaces its folder whole, so give a new or empty folder"
            )


def write(result: TopResult, out: Path, job: Job, raw: bool = False, visualisations: Mapping[str, VisualiseResult] | None = None) -> Path:
    """Write the whole report, ``state.npz`` included, into a folder beside ``out``, then swap it in
    for ``out`` (see :func:`check_replaceable`); ``visualisations`` (by layer) add each channel's
    optimised image. Returns the path of ``index.html``."""
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.writing"
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted write left
    staging.mkdir()
    try:
        _write_into(staging, result, job, raw, visualisations or {})
        result.state.save(staging / "state.npz")
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def _swap(new: Path, out: Path) -> None:
    """``new`` takes the place of ``out`` (the old folder, if any, removed)."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _write_into(out: Path, result: TopResult, job: Job, raw: bool, visualisations: Mapping[str, VisualiseResult]) -> None:
    state = result.state
    (out / "images").mkdir()
    for image in result.images.values():
        Image.fromarray(to_rgb(image.pixels)).save(out / "images" / f"{image.index}.png")
    folders = _folders(list(state.layers))
    manifest = {
        "model": job.model, "model_sha256": state.model, "data": job.data, "data_set_size": state.size, "images_read": state.images_read,
        "covered": [list(r) for r in state.covered], "skipped_count": state.skipped_count,
        "skipped": [{"index": s.index, "path": s.path, "reason": s.reason} for s in state.skipped],
        "k": state.k, "by": state.by, "method": result.method, "seconds": round(job.seconds, 1), "layers": {},
    }
    for layer, per_channel in result.entries.items():
        folder = folders[layer]
        (out / folder).mkdir()
        size = tile_size(next((e for e in per_channel.values() if e), []))
        blocks, channels = [], {}
        optimised = {u.unit: u for u in visualisations[layer].units} if layer in visualisations else {}
        for channel, entries in per_channel.items():
            block = channel_block(entries, result.images, state.k, size)
            png = f"{folder}/channel-{channel:04d}.png"
            block.save(out / png)
            blocks.append((channel, block))
            channels[str(channel)] = {"png": png, "size": [block.width, block.height], "top": [manifest_entry(e, result.images[e.index]) for e in entries]}
            if entries:
                tile = f"{folder}/tile-{channel:04d}.png"
                picture = channel_tile(entries[0], result.images[entries[0].index])
                picture.save(out / tile)
                channels[str(channel)]["tile"], channels[str(channel)]["tile_size"] = tile, [picture.width, picture.height]
            if channel in optimised:
                channels[str(channel)]["optimised"] = _optimised(out, f"{folder}/optimised-{channel:04d}.png", optimised[channel])
            if raw and entries:
                npy = out / "raw" / folder / f"channel-{channel:04d}.npy"
                npy.parent.mkdir(parents=True, exist_ok=True)
                np.save(npy, np.stack([e.reconstruction for e in entries]))
                channels[str(channel)]["npy"] = npy.relative_to(out).as_posix()
        title = f"{job.model} · layer {layer} · top-{state.k} by {state.by} over {state.images_read:,} images of {job.data} · {result.method}"
        pages = []
        for number, sheet in enumerate(sheets(blocks, title), 1):
            name = f"{folder}/sheet-{number:02d}.png"
            sheet.save(out / name)
            pages.append(name)
        manifest["layers"][layer] = {"page": f"layer-{folder}.html", "sheets": pages, "channels": channels}
        if layer in visualisations:
            found = visualisations[layer]
            manifest["layers"][layer]["visualisation"] = {"kind": found.objective, "steps": found.steps, "seed": found.seed, "description": found.description}
    for layer in manifest["layers"]:
        (out / manifest["layers"][layer]["page"]).write_text(_layer_page(layer, manifest, result), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "index.html").write_text(_index_page(manifest), encoding="utf-8")


def _optimised(out: Path, png: str, unit: VisualisedUnit) -> dict:
    """Save a channel's (first) optimised image; what the manifest says of it: its objective and the
    channel's rank among the layer's channels by mean response on it (1: first)."""
    picture = Image.fromarray(to_rgb(unit.images[0]))
    picture.save(out / png)
    return {
        "png": png, "size": [picture.width, picture.height], "objective": float(unit.objective[0]),
        "rank": int(unit.rank()[0]) + 1, "of": int(unit.layer_means.shape[1]),
    }


def _folders(layers: list[str]) -> dict[str, str]:
    """A distinct file-system name per layer."""
    out: dict[str, str] = {}
    for layer in layers:
        name = safe_name(layer)
        while name in out.values():
            name += "_"
        out[layer] = name
    return out


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: .3em .7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
nav { margin: .4em 0; } nav a { margin-right: .8em; }
.jump a { display: inline-block; min-width: 2.4em; margin: 0 .2em .2em 0; text-align: center; }
.channel { border-top: 1px solid #ccc; padding: .6em 0 1em; }
.block, .tile { image-rendering: pixelated; } .block { max-width: 100%; height: auto; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; } .optimised { margin: 0; font-size: 12px; color: #444; }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; } .tiles a { font-size: 11px; text-align: center; color: #444; text-decoration: none; }
.tiles img { display: block; border: 1px solid #ddd; }
.winners { display: flex; flex-wrap: wrap; gap: .7em; list-style: none; padding: 0; margin: .5em 0 0; }
.winners li { width: 11em; font-size: 12px; }
.thumb { position: relative; display: inline-block; width: 64px; height: 64px; }
.thumb img { width: 64px; height: 64px; image-rendering: pixelated; display: block; }
.box { position: absolute; border: 1px solid #ff2a2a; box-sizing: border-box; }
.path { color: #666; overflow-wrap: anywhere; }
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _summary(manifest: dict) -> str:
    skipped = manifest["skipped_count"]
    rows = [
        ("model", f"{html.escape(manifest['model'])} <code>{manifest['model_sha256'][:12]}</code>"),
        ("data set", f"{html.escape(manifest['data'])}: {manifest['images_read']:,} of {manifest['data_set_size']:,} images read"),
        ("ranking", f"top-{manifest['k']} per channel by the map's {'maximum' if manifest['by'] == 'max' else 'mean'}; ties to the lower data-set index"),
        ("reconstruction", f"{manifest['method']}, of the map's strongest activation alone"),
        ("skipped", f"{skipped} unreadable image(s)" if skipped else "none"),
    ]
    if manifest["seconds"]:
        rows.append(("time", f"{manifest['seconds']:.1f} s"))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _img(src: str, alt: str, size: list[int], scale: int = 1, cls: str = "") -> str:
    """A lazily loaded picture with its size given (so that the layout does not wait for it)."""
    width, height = size[0] * scale, size[1] * scale
    extra = f' class="{cls}"' if cls else ""
    return f'<img{extra} src="{html.escape(src)}" alt="{html.escape(alt)}" width="{width}" height="{height}" loading="lazy">'


def _optimised_figure(channel: str, found: dict, height: int) -> str:
    """A channel's optimised image, enlarged to the height of its block, with its objective and rank."""
    scale = max(1, height // found["size"][1])
    return (
        f'<figure class="optimised"><a href="{html.escape(found["png"])}">{_img(found["png"], f"optimised image of channel {channel}", found["size"], scale, "block")}</a>'
        f'<figcaption>optimised image: objective {found["objective"]:.3g}, rank {found["rank"]} of {found["of"]}</figcaption></figure>'
    )


def _tile_scale(size: list[int]) -> int:
    """A tile's enlargement to about 2 x TILE pixels wide."""
    return max(1, round(2 * TILE / max(size[0], 1)))


def _tile_links(page: str, channels: dict, limit: int | None = None) -> str:
    """Each channel's tile, linking to its section of the layer page."""
    links = [
        f'<a href="{html.escape(page)}#ch{channel}">{_img(data["tile"], f"channel {channel}", data["tile_size"], _tile_scale(data["tile_size"]), "tile")}{channel}</a>'
        for channel, data in list(channels.items())[:limit] if "tile" in data
    ]
    return f'<div class="tiles">{"".join(links)}</div>'


def _sheet_links(info: dict) -> str:
    return ", ".join(f'<a href="{html.escape(s)}">sheet {n}</a>' for n, s in enumerate(info["sheets"], 1))


def _index_page(manifest: dict) -> str:
    layers = "".join(
        f'<tr><td><a href="{html.escape(info["page"])}">{html.escape(layer)}</a></td><td>{len(info["channels"])}</td><td>{_sheet_links(info)}</td>'
        f'<td>{_tile_links(info["page"], info["channels"], INDEX_TILES)}</td></tr>'
        for layer, info in manifest["layers"].items()
    )
    skipped = "".join(f"<li><code>{html.escape(s['path'])}</code> (index {s['index']}): {html.escape(s['reason'])}</li>" for s in manifest["skipped"])
    body = (
        f"<h1>Top-{manifest['k']} images per feature map</h1>\n{_summary(manifest)}\n"
        "<p>For every channel, the images of the data set whose feature map is strongest; each is shown as the input patch "
        "under the receptive field of the map's strongest activation (grey where the field leaves the image) beside the "
        "projection of that single activation back to pixels (Zeiler &amp; Fergus 2013, Fig. 2). Patches that look alike "
        "show what the channel responds to; the reconstruction shows which of their pixels drive it. A tile below is a "
        "channel's strongest patch beside its reconstruction.</p>\n"
        f"<h2>Layers</h2>\n<table><tr><th>layer</th><th>channels</th><th>sheets</th><th>first channels</th></tr>{layers}</table>\n"
        + (f"<h2>Skipped images</h2><ul>{skipped}</ul>\n" if skipped else "")
        + '<p>Data: <a href="manifest.json">manifest.json</a> (every entry with its image, class, activation, location and boxes), '
        '<a href="state.npz">state.npz</a> (the scan\'s state: merge or resume with <code>zfclient top</code>).</p>'
    )
    return _page(f"top-{manifest['k']}: {manifest['model']}", body)


def _layer_nav(layer: str, manifest: dict) -> str:
    """Links to the index and to the layers before and after this one."""
    names = list(manifest["layers"])
    at = names.index(layer)
    links = ['<a href="index.html">&larr; all layers</a>']
    if at > 0:
        links.append(f'<a href="{html.escape(manifest["layers"][names[at - 1]]["page"])}">previous layer: {html.escape(names[at - 1])}</a>')
    if at + 1 < len(names):
        links.append(f'<a href="{html.escape(manifest["layers"][names[at + 1]]["page"])}">next layer: {html.escape(names[at + 1])}</a>')
    return f"<nav>{''.join(links)}</nav>"


def _layer_page(layer: str, manifest: dict, result: TopResult) -> str:
    info = manifest["layers"][layer]
    cards = []
    for channel, data in info["channels"].items():
        items = []
        for item, entry in zip(data["top"], result.entries[layer][int(channel)]):
            image = result.images[entry.index]
            height, width = image.pixels.shape[1:]
            top, left, bottom, right = entry.receptive_field
            box = f"top:{100 * top / height:.2f}%;left:{100 * left / width:.2f}%;height:{100 * (bottom - top) / height:.2f}%;width:{100 * (right - left) / width:.2f}%"
            where = "(" + ", ".join(map(str, item["location"])) + ")" if item["location"] else "whole image"
            peak = "" if manifest["by"] == "max" else " (peak {:.4g})".format(item["activation"])
            source, alt = f"images/{item['index']}.png", f"image {item['index']}"
            items.append(
                f'<li><a class="thumb" href="{source}">{_img(source, alt, [64, 64])}'
                f'<span class="box" style="{box}"></span></a><br>#{item["rank"]} '
                + (f'<b>{html.escape(item["class"])}</b> ' if item["class"] else "")  # a flat folder: no classes
                + f'{item["value"]:.4g}{peak} at {where}<br>'
                f'<span class="path" title="{html.escape(item["path"])}">{html.escape("/".join(Path(item["path"]).parts[-2:]))}</span></li>'
            )
        scale = max(1, DISPLAY_WIDTH // data["size"][0])
        block = f'<a href="{html.escape(data["png"])}">{_img(data["png"], f"layer {layer} channel {channel}: reconstructions and patches", data["size"], scale, "block")}</a>'
        cards.append(
            f'<section class="channel" id="ch{channel}"><h3>channel {channel}</h3>'
            + (f'<div class="row">{block}{_optimised_figure(channel, data["optimised"], data["size"][1] * scale)}</div>' if "optimised" in data else block)
            + f'<ol class="winners">{"".join(items) or "<li>no image read</li>"}</ol></section>'
        )
    jump = "".join(f'<a href="#ch{channel}">{channel}</a>' for channel in info["channels"])
    visualised = info.get("visualisation")
    optimised = (
        f"<p>Beside each block, an image optimised to excite the channel (feature visualisation, Olah et al. 2017): {visualised['kind']} "
        f"objective, {visualised['steps']} steps, seed {visualised['seed']}; {html.escape(visualised['description'])}. Its rank is the channel's "
        "place among the layer's channels by mean response on it.</p>\n"
    ) if visualised else ""
    body = (
        f'{_layer_nav(layer, manifest)}<h1>Layer {html.escape(layer)}: top-{manifest["k"]} per channel</h1>\n{_summary(manifest)}\n'
        f"<p>Sheets of the whole layer, 16 channels each: {_sheet_links(info)}.</p>\n"
        f'<h2>Channels</h2><nav class="jump">{jump}</nav>\n'
        "<p>Each block: reconstructions (left) beside the input patches (right), strongest first. Below it, the image each "
        "patch came from, with the receptive field outlined in red, its class, the ranking value and the activation's location.</p>\n"
        + optimised + "\n".join(cards) + f"\n{_layer_nav(layer, manifest)}"
    )
    return _page(f"layer {layer}: top-{manifest['k']}", body)
