"""The projection graph's kernel forms and onnxruntime session settings, side by side in one run.

The projection of the bundled model's layer 4 (top 9 channels of 16 images: 144 rows, mode max,
deconvnet) runs on sessions that differ from the engine's own (``runtime.session``: every graph
optimisation, the NCHWc layout transformer among them, memory-pattern planning on, the CPU arena
off, one intra-op thread per core) in one setting each, and on the engine's session of the graph
built with every convolution's backward as onnxruntime's ``ConvTranspose`` (the graph before the
forms were timed, issue 23). Interleaved rounds (:mod:`sidebyside`); the time of each relative to
the engine's, its peak memory above where it started, the load.

    python bench/projection_bench.py [--batch 16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from sidebyside import cpu, interleaved, machine, mib
from zfnet.server import deconv, projection, runtime
from zfnet.server.rules import transposed
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load

ROOT = Path(__file__).resolve().parents[1]
LAYER, TOP = "relu4", 9


def _options(change: Callable[[ort.SessionOptions], None]) -> ort.SessionOptions:
    """The engine's session options (as :func:`runtime.session` sets them), then ``change``."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = False
    change(options)
    return options


def _level(level: ort.GraphOptimizationLevel) -> Callable[[ort.SessionOptions], None]:
    def change(o: ort.SessionOptions) -> None:
        o.graph_optimization_level = level
    return change


def _set(attr: str, value: object) -> Callable[[ort.SessionOptions], None]:
    return lambda o: setattr(o, attr, value)


SETTINGS: dict[str, Callable[[ort.SessionOptions], None]] = {
    "engine (all optimisations, NCHWc, mem pattern, no arena, threads = cores)": lambda o: None,
    "optimisation: extended (no NCHWc layout)": _level(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    "optimisation: basic": _level(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    "optimisation: none": _level(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    "intra-op threads: 1": _set("intra_op_num_threads", 1),
    "memory-pattern planning off": _set("enable_mem_pattern", False),
    "CPU arena on": _set("enable_cpu_mem_arena", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "projection_bench.json")
    args = parser.parse_args()

    path = ROOT / "models" / "zfnet-cifar10.onnx"
    model = load(path.read_bytes(), path.stem)
    files = sorted((ROOT / "samples" / "cifar10").glob("*/*.jpg"))
    batch = Engine(ModelStore()).batch(model, [ImageInput(encoded=p.read_bytes()) for p in (files * args.batch)[: args.batch]])
    proj, _ = model.projection(LAYER, "deconvnet")
    names = list(dict.fromkeys([LAYER, *(n for n in proj.forward_tensors if n != model.input_name)]))
    forward = {model.input_name: batch, **dict(zip(names, runtime.tensors(model.session, names, {model.input_name: batch})))}
    activation = forward[LAYER]
    selection = deconv.select(activation, deconv.choose_channels(activation, None, TOP), "max")
    data = proj.model.SerializeToString()
    sessions = {name: ort.InferenceSession(data, _options(change), providers=["CPUExecutionProvider"]) for name, change in SETTINGS.items()}
    with mock.patch("zfnet.server.rules.conv.forms", lambda conv: {"transposed": transposed.forms(conv)["transposed"]}):
        plain = projection.build(model.index or model.model, LAYER, "deconvnet").model.SerializeToString()
    sessions["every conv backward as ConvTranspose"] = ort.InferenceSession(plain, _options(lambda o: None), providers=["CPUExecutionProvider"])

    def run(session: ort.InferenceSession) -> Callable[[], object]:
        return lambda: deconv.project(proj, session, forward, selection.signal, selection.image_index, batch.shape[1:])

    timings, (load_before, load_after) = interleaved({name: run(s) for name, s in sessions.items()}, args.rounds)
    engine = next(iter(timings.values()))
    table = Table("setting", "ms (best)", "ms (median)", "vs engine (best, median)", "peak MiB",
                  title=(f"projection of {path.stem} {LAYER}, {len(selection.channel)} rows ({args.batch} images x top {TOP})\n"
                         f"{machine()}, "
                         f"onnxruntime {ort.__version__}, load {load_before:.1f}-{load_after:.1f}"))
    rows = []
    for name, t in timings.items():
        rows.append({"setting": name, "best_ms": t.best * 1e3, "median_ms": t.median * 1e3, "vs_engine": t.best / engine.best,
                     "vs_engine_median": t.median / engine.median, "peak_bytes": t.peak})
        table.add_row(name, f"{t.best * 1e3:.1f}", f"{t.median * 1e3:.1f}", f"{t.best / engine.best:.2f}x, {t.median / engine.median:.2f}x",
                      mib(t.peak).removesuffix(" MiB"))
    Console(width=200).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": {**cpu(), "onnxruntime": ort.__version__, "load": [load_before, load_after],
                                                 "cpus_online": os.cpu_count()},
                                     "rows_projected": len(selection.channel), "rounds": args.rounds, "settings": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
