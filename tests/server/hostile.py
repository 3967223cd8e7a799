"""Hostile requests, crafted small: tests and ``bench/soak.py`` send them to a real server.

Each builder makes the few bytes an attacker would send; none of them allocates more than a few
megabytes here. The server must refuse each one from what it can see before doing the work."""

from __future__ import annotations

import io
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from zfnet.server.admission import rss_bytes

IR_VERSION = 10
OPSET = 18


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, bit_depth: int = 1, color_type: int = 0, rows: bool = True) -> bytes:
    """A PNG declaring ``width`` x ``height`` pixels (grey, 1 bit by default). With ``rows`` its
    pixel data is real (all zero), so it decodes: a 13000 x 13000 one is about 20 KB."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if rows:
        row_bytes = 1 + (width * bit_depth * (3 if color_type == 2 else 1) + 7) // 8
        compressor, parts = zlib.compressobj(9), []
        blank = b"\0" * row_bytes
        for _ in range(height):
            parts.append(compressor.compress(blank))
        parts.append(compressor.flush())
        data = b"".join(parts)
    else:
        data = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB PNG of noise (it compresses to about its raw size)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def flat_jpeg(width: int, height: int) -> bytes:
    """A one-colour RGB JPEG of ``width`` x ``height`` (small to send, large to decode)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def tiny_png(value: int = 128) -> bytes:
    """A valid 1x1 RGB PNG (about 70 bytes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def conv_model(height: int = 8, width: int = 8, channels: int = 4, seed: int = 0, name: str = "small") -> onnx.ModelProto:
    """image (N,3,H,W) -> Conv 3x3 -> Relu: a few KB, whatever H and W it declares."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w1")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    ]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("r1", TensorProto.FLOAT, ["N", channels, height, width])], initializer=[w],
    )
    return _model(graph)


def huge_input_model() -> onnx.ModelProto:
    """About 3 KB declaring a 3 x 16000 x 16000 input: 3 GB per image before any activation."""
    return conv_model(16000, 16000)


def _external(tensor: onnx.TensorProto, location: str, length: int) -> onnx.TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def file_reading_model(location: str, length: int = 16, where: str = "initializer") -> onnx.ModelProto:
    """A model whose tensor ``secret`` is ``length`` bytes of the file ``location`` (ONNX external
    data), added to every image's activation ``leak`` (N, length): the file's bytes come back as
    activations. ``where``: the tensor is an initializer, or a Constant node's value."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w1")
    secret = TensorProto(name="secret", data_type=TensorProto.UINT8, dims=[length])
    _external(secret, location, length)
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c1"], ["f1"], name="flat"),
        helper.make_node("ReduceSum", ["f1"], ["s1"], name="sum", keepdims=1),
        helper.make_node("Mul", ["s1", "zero"], ["z1"], name="zero_it"),
        helper.make_node("Cast", ["secret"], ["secret_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["z1", "secret_f"], ["leak"], name="leak"),
    ]
    initializers = [w, numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero")]
    if where == "initializer":
        initializers.append(secret)
    else:
        nodes.insert(0, helper.make_node("Constant", [], ["secret"], name="secret_const", value=secret))
    graph = helper.make_graph(
        nodes, "reader", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("leak", TensorProto.FLOAT, ["N", length])], initializer=initializers,
    )
    return _model(graph)


def allocation_bomb_model() -> onnx.ModelProto:
    """image (N,3,8,8) -> Relu, and ``bomb``: ConstantOfShape of N * 2^61 floats, a size only known
    when it runs (no static shape to refuse at load). No allocator can give it; nothing is touched."""
    nodes = [
        helper.make_node("Relu", ["image"], ["r1"], name="relu1"),
        helper.make_node("Shape", ["image"], ["n"], name="batch", start=0, end=1),
        helper.make_node("Mul", ["n", "huge"], ["count"], name="count"),
        helper.make_node("ConstantOfShape", ["count"], ["bomb"], name="bomb", value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
    ]
    graph = helper.make_graph(
        nodes, "bomb", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("bomb", TensorProto.FLOAT, None), helper.make_tensor_value_info("r1", TensorProto.FLOAT, ["N", 3, 8, 8])],
        initializer=[numpy_helper.from_array(np.asarray([1 << 61], np.int64), "huge")],
    )
    return _model(graph)


# ---- a real zfserver process, its RSS sampled ---------------------------------------------------


class Sampler(threading.Thread):
    """RSS of process ``pid`` every ``every`` seconds until stopped; past ``kill_at`` bytes the
    process is killed (a defect must not take the machine), and ``killed`` says so."""

    def __init__(self, pid: int, every: float = 0.05, kill_at: int | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.kill_at = pid, every, kill_at
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()
        self.killed = False

    def run(self) -> None:
        while not self.halt.is_set():
            rss = rss_bytes(self.pid)
            if rss:
                self.samples.append((time.monotonic(), rss))
                if self.kill_at is not None and rss > self.kill_at and not self.killed:
                    self.killed = True
                    os.kill(self.pid, signal.SIGKILL)
            self.halt.wait(self.every)

    def since(self, start: float) -> list[int]:
        return [r for t, r in self.samples if t >= start]

    def peak(self, start: float = 0.0) -> int:
        return max(self.since(start), default=0)

    def settle(self, wait_s: float, window: float = 2.0) -> int:
        """RSS once it stops falling: the median of the last ``window`` seconds, after at most ``wait_s``."""
        end = time.monotonic() + wait_s
        last = None
        while time.monotonic() < end:
            time.sleep(window)
            now = statistics.median(self.since(time.monotonic() - window) or [0])
            if last is not None and now >= last * 0.99:
                return int(now)
            last = now
        return int(statistics.median(self.since(time.monotonic() - window) or [0]))


def _copy_lines(source, out) -> None:
    """Each line of ``source`` into ``out`` as it comes (flushed: tests read the log meanwhile)."""
    for line in source:
        out.write(line)
        out.flush()


class Zfserver:
    """``zfserver`` in a process of its own on 127.0.0.1 (any free port), its stderr in ``log``,
    its RSS sampled every 20 ms (killed past ``kill_at``); ``options`` are command-line options."""

    def __init__(self, *options: str, log: Path, kill_at: int | None = None, env: dict[str, str] | None = None) -> None:
        script = Path(sys.executable).parent / "zfserver"
        self.log_path = log
        out = log.open("w")
        self.process = subprocess.Popen(
            [str(script), "--port", "0", "--host", "127.0.0.1", *options], stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        stderr = self.process.stderr
        assert stderr is not None  # stderr=PIPE
        self.target = ""
        for line in stderr:
            out.write(line)
            found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.target = f"127.0.0.1:{found.group(1)}"
                break
        if not self.target:
            out.close()
            raise RuntimeError(f"zfserver did not start; see {log}")
        out.flush()
        threading.Thread(target=_copy_lines, args=(stderr, out), daemon=True).start()
        self.rss = Sampler(self.process.pid, 0.02, kill_at)
        self.rss.start()

    def close(self) -> int:
        """Stop the server (SIGTERM); its exit code."""
        self.rss.halt.set()
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(60)
