"""The top-k report (Zeiler & Fergus 2013, Fig. 2): per channel a block of reconstructions beside the
input patches they came from, paged sheets per layer, a static HTML report and a manifest.

Everything is written under one folder and opens from disk: ``index.html`` links a page per layer,
pages use relative paths only, no script, no network. Layout::

    index.html  manifest.json  state.npz
    layer-<layer>.html
    <layer>/channel-0003.png   <layer>/sheet-01.png
    images/<index>.png          (each winning image once, as the model saw it)
    raw/<layer>/channel-0003.npy  (with raw=True: (k, C, H, W) float32 reconstructions, rank order)
"""

from __future__ import annotations

import functools
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from zfnet.client.names import safe_name
from zfnet.client.render import for_display
from zfnet.wire.top import Entry, TopImage, TopResult

GREY = 128  # outside the image, a patch is grey (the paper's border patches)
TILE = 64  # a patch is enlarged (nearest neighbour) to about this many pixels
GAP, BLOCK_GAP = 2, 10
CHANNELS_PER_SHEET = 16
DISPLAY_WIDTH = 640  # a channel's block is shown enlarged by a whole factor to about this width
BACKGROUND, EMPTY = (255, 255, 255), (225, 225, 225)


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


def _grid(tiles: list[np.ndarray | None], k: int, size: tuple[int, int]) -> Image.Image:
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
    if not entries:
        return (TILE, TILE)
    top, left, bottom, right = entries[0].patch
    height, width = bottom - top, right - left
    scale = max(1, round(TILE / max(height, width)))
    return (width * scale, height * scale)


def channel_block(entries: list[Entry], images: dict[int, TopImage], k: int, size: tuple[int, int]) -> Image.Image:
    """The paper's Fig. 2 block for one channel: reconstructions (left) beside their input patches (right)."""
    recons = _grid([reconstruction(e) for e in entries], k, size)
    patches = _grid([patch(e, images[e.index]) for e in entries], k, size)
    block = Image.new("RGB", (recons.width + BLOCK_GAP + patches.width, recons.height), BACKGROUND)
    block.paste(recons, (0, 0))
    block.paste(patches, (recons.width + BLOCK_GAP, 0))
    return block


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


def write(result: TopResult, out: Path, job: Job, raw: bool = False) -> Path:
    """Write the whole report under ``out``; ``index.html`` and ``manifest.json`` come last, so a report
    that has them is complete. Returns the path of ``index.html``."""
    state = result.state
    for stale in ("index.html", "manifest.json"):
        (out / stale).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
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
        (out / folder).mkdir(exist_ok=True)
        size = tile_size(next((e for e in per_channel.values() if e), []))
        blocks, channels, widths = [], {}, {}
        for channel, entries in per_channel.items():
            block = channel_block(entries, result.images, state.k, size)
            png = f"{folder}/channel-{channel:04d}.png"
            labelled = _labelled(block, f"{layer} · channel {channel}")
            labelled.save(out / png)
            widths[channel] = labelled.width * max(1, DISPLAY_WIDTH // labelled.width)
            blocks.append((channel, block))
            channels[str(channel)] = {"png": png, "top": [manifest_entry(e, result.images[e.index]) for e in entries]}
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
        (out / f"layer-{folder}.html").write_text(_layer_page(layer, manifest, result, widths), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    index = out / "index.html"
    index.write_text(_index_page(manifest), encoding="utf-8")
    return index


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
.channel { border-top: 1px solid #ccc; padding: .6em 0 1em; }
.block { max-width: 100%; image-rendering: pixelated; }
.winners { display: flex; flex-wrap: wrap; gap: .7em; list-style: none; padding: 0; margin: .5em 0 0; }
.winners li { width: 11em; font-size: 12px; }
.thumb { position: relative; display: inline-block; width: 64px; height: 64px; }
.thumb img { width: 64px; height: 64px; image-rendering: pixelated; display: block; }
.box { position: absolute; border: 1px solid #ff2a2a; box-sizing: border-box; }
.path { color: #666; overflow-wrap: anywhere; }
.sheet { max-width: 100%; }
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _summary(manifest: dict) -> str:
    skipped = manifest["skipped_count"]
    rows = [
        ("model", f"{manifest['model']} <code>{manifest['model_sha256'][:12]}</code>"),
        ("data set", f"{html.escape(manifest['data'])}: {manifest['images_read']:,} of {manifest['data_set_size']:,} images read"),
        ("ranking", f"top-{manifest['k']} per channel by the map's {'maximum' if manifest['by'] == 'max' else 'mean'}; ties to the lower data-set index"),
        ("reconstruction", f"{manifest['method']}, of the map's strongest activation alone"),
        ("skipped", f"{skipped} unreadable image(s)" if skipped else "none"),
    ]
    if manifest["seconds"]:
        rows.append(("time", f"{manifest['seconds']:.1f} s"))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _index_page(manifest: dict) -> str:
    layers = "".join(
        f'<tr><td><a href="{html.escape(info["page"])}">{html.escape(layer)}</a></td><td>{len(info["channels"])}</td>'
        f'<td><a href="{html.escape(info["page"])}"><img class="sheet" src="{html.escape(info["sheets"][0])}" alt="first sheet of layer {html.escape(layer)}" width="360"></a></td></tr>'
        for layer, info in manifest["layers"].items()
    )
    skipped = "".join(f"<li><code>{html.escape(s['path'])}</code> (index {s['index']}): {html.escape(s['reason'])}</li>" for s in manifest["skipped"])
    body = (
        f"<h1>Top-{manifest['k']} images per feature map</h1>\n{_summary(manifest)}\n"
        "<p>For every channel, the images of the data set whose feature map is strongest; each is shown as the input patch "
        "under the receptive field of the map's strongest activation (grey where the field leaves the image) beside the "
        "projection of that single activation back to pixels (Zeiler &amp; Fergus 2013, Fig. 2). Patches that look alike "
        "show what the channel responds to; the reconstruction shows which of their pixels drive it.</p>\n"
        f"<h2>Layers</h2>\n<table><tr><th>layer</th><th>channels</th><th>first sheet</th></tr>{layers}</table>\n"
        + (f"<h2>Skipped images</h2><ul>{skipped}</ul>\n" if skipped else "")
        + '<p>Data: <a href="manifest.json">manifest.json</a> (every entry with its image, class, activation, location and boxes), '
        '<a href="state.npz">state.npz</a> (the scan\'s state: merge or resume with <code>zfclient top</code>).</p>'
    )
    return _page(f"top-{manifest['k']}: {manifest['model']}", body)


def _layer_page(layer: str, manifest: dict, result: TopResult, widths: dict[int, int]) -> str:
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
            items.append(
                f'<li><span class="thumb"><img src="images/{item["index"]}.png" alt="image {item["index"]}">'
                f'<span class="box" style="{box}"></span></span><br>#{item["rank"]} <b>{html.escape(item["class"] or "?")}</b> '
                f'{item["value"]:.4g}{peak} at {where}<br>'
                f'<span class="path" title="{html.escape(item["path"])}">{html.escape("/".join(Path(item["path"]).parts[-2:]))}</span></li>'
            )
        cards.append(
            f'<section class="channel" id="ch{channel}"><h3>channel {channel}</h3>'
            f'<img class="block" src="{html.escape(data["png"])}" width="{widths[int(channel)]}" alt="layer {html.escape(layer)} channel {channel}: reconstructions and patches">'
            f'<ol class="winners">{"".join(items) or "<li>no image read</li>"}</ol></section>'
        )
    body = (
        f'<p><a href="index.html">&larr; all layers</a></p><h1>Layer {html.escape(layer)}: top-{manifest["k"]} per channel</h1>\n{_summary(manifest)}\n'
        "<p>Each block: reconstructions (left) beside the input patches (right), strongest first. Below it, the image each "
        "patch came from, with the receptive field outlined in red, its class, the ranking value and the activation's location.</p>\n"
        + "\n".join(cards)
    )
    return _page(f"layer {layer}: top-{manifest['k']}", body)
