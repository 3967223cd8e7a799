"""onnxruntime sessions: the CUDA execution provider when it loads, else the CPU one.

On CUDA (``ZFNET_PROVIDER=cpu`` keeps a GPU machine on the CPU): cuDNN picks convolution algorithms
by heuristic rather than by timing them all (exhaustive search stalls a session's first call for
seconds, onnxruntime #12880), each session's device arena grows by what is asked for only and is
capped at the server's memory budget (:func:`limit_gpu_memory`), and :func:`run` uses IO binding:
forward tensors the projection session reads stay on the device between the two sessions, and
images go up from a pinned host buffer. On the CPU every run is a plain ``session.run``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import threading
from collections.abc import Collection

import numpy as np
import onnxruntime as ort

log = logging.getLogger("zfnet.server")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDER_ENV = "ZFNET_PROVIDER"  # "cpu": stay on the CPU even where CUDA loads
CUDA_OPTIONS = {
    "device_id": "0",
    "cudnn_conv_algo_search": "HEURISTIC",  # EXHAUSTIVE (the default) times every algorithm on a shape's first call
    "arena_extend_strategy": "kSameAsRequested",  # grow by what a run needs, not by powers of two
    "do_copy_in_default_stream": "1",
    "use_tf32": "0",  # full float32 as on the CPU (TF32 matmuls and convolutions are on by default and drift ~1e-3)
}
_gpu_limit = {"bytes": 0}  # 0: no cap beyond the device's own memory


@functools.cache
def providers() -> tuple[str, ...]:
    """The providers every session uses, decided once per process, logged in one line."""
    available = ort.get_available_providers()
    wanted = os.environ.get(PROVIDER_ENV, "").lower() != "cpu"
    if wanted and CUDA in available and _cuda_loads():
        chosen = (CUDA, CPU)
        log.info("onnxruntime %s: using CUDAExecutionProvider", ort.__version__)
    else:
        chosen = (CPU,)
        reason = f"{PROVIDER_ENV}=cpu" if not wanted else "CUDA provider not built in" if CUDA not in available else "CUDA libraries did not load"
        log.info("onnxruntime %s: using CPUExecutionProvider (%s)", ort.__version__, reason)
    return chosen


def device() -> str | None:
    """Where tensors may stay between runs: "cuda" when sessions run on CUDA, else None (plain runs)."""
    return "cuda" if providers()[0] == CUDA else None


def limit_gpu_memory(nbytes: int) -> None:
    """Cap the device arena of every session made from now on at ``nbytes`` (the server's memory
    budget: what admission lets requests hold on the host, they may hold on the device)."""
    _gpu_limit["bytes"] = max(0, int(nbytes))


def cuda_options() -> dict[str, str]:
    """The CUDA provider's options for a new session."""
    options = dict(CUDA_OPTIONS)
    if _gpu_limit["bytes"]:
        options["gpu_mem_limit"] = str(_gpu_limit["bytes"])
    return options


def _cuda_loads() -> bool:
    """Try the CUDA provider on a one-node model, with onnxruntime's own error log silenced."""
    from onnx import TensorProto, helper

    from zfnet.converters.graph import IR_VERSION

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = IR_VERSION
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels (torch's) where the system has none
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # it prints install advice
                ort.preload_dlls()
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:  # onnxruntime raises plain RuntimeError/Fail when CUDA libraries are missing
        return False
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default: warnings


def session(model_bytes: bytes | str, threads: int = 0, disabled: Collection[str] = ()) -> ort.InferenceSession:
    """A session on the chosen providers. The CPU memory arena is off: onnxruntime's arena keeps
    every block it ever grew to (a burst of large requests stayed resident for good); without it,
    tensors go back to the heap after each run and the budget's ``release_memory`` returns them to
    the operating system (3x lower peak RSS). The heap reuses them between runs as the arena would
    (``admission.keep_freed_memory_until_idle``), so runs keep the arena's speed.

    ``threads``: onnxruntime's threads within one operator on the CPU (0: one per core). A small
    graph run right after a model's (a feature head) takes 1: a second pool of busy threads next to
    the model's made the pair of runs 1.6x slower than the model's alone on 2 cores.

    ``disabled``: onnxruntime graph optimisers (by name) not to apply. ``model_bytes`` may be the
    path of a model file the server wrote (its prepared-model cache), which onnxruntime reads itself."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # onnxruntime prints a model's own node names raw; the server logs errors itself, escaped
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = threads
    chosen = [(CUDA, cuda_options()) if p == CUDA else p for p in providers()]
    made = ort.InferenceSession(model_bytes, options, providers=chosen, disabled_optimizers=list(disabled))
    release_model_bytes(made)
    return made


def release_model_bytes(made: ort.InferenceSession) -> None:
    """Let go of the model bytes onnxruntime's Python wrapper keeps for the session's life (its own
    "TODO: this is bad as we're holding the memory indefinitely"): once built, the session holds its
    weights itself, and the bytes were a second copy of them (553 MB for VGG16, per session). They
    only served to build the session again on another provider, so that fallback goes too: an
    execution provider's failure is an error, not a silent switch of the whole session to the CPU."""
    made.disable_fallback()
    made._model_bytes = None  # noqa: SLF001  (the wrapper's only reference to them)


def rows(session: ort.InferenceSession | FixedBatchSession, images: int) -> int:
    """The rows a run of ``session`` over ``images`` images computes at once (what its memory follows):
    a fixed batch's runs are padded to it."""
    return max(images, session.batch) if isinstance(session, FixedBatchSession) else images


def tensors(session: ort.InferenceSession | FixedBatchSession, names: list[str], feeds: dict) -> list[np.ndarray]:
    """Outputs ``names`` of one plain ``session.run``, as numpy arrays: zfnet fetches dense tensors
    only (layers, the model's output), never onnxruntime's sequences, maps or sparse tensors."""
    return [np.asarray(out) for out in session.run(names, feeds)]


def run(session, names: list[str], feeds: dict, host: Collection[str] | None = None) -> dict:
    """Outputs ``names`` of one run, by name. On the CPU: ``session.run``, numpy out. On a device
    (:func:`device`): IO binding; ``feeds`` may hold device tensors (OrtValues) from an earlier run,
    numpy images go up through a pinned buffer, and the outputs not in ``host`` (None: all are) stay
    on the device as OrtValues for the next session."""
    where = device()
    if where is None or not isinstance(session, ort.InferenceSession):  # a FixedBatchSession pads on the host
        plain = {k: v.numpy() if isinstance(v, ort.OrtValue) else v for k, v in feeds.items()}
        return dict(zip(names, session.run(names, plain)))
    binding = session.io_binding()
    keep = []  # host buffers bound by address must outlive the run
    for name, value in feeds.items():
        if isinstance(value, ort.OrtValue):
            binding.bind_ortvalue_input(name, value)
        else:
            array = _pinned(np.asarray(value)) if where != "cpu" else np.ascontiguousarray(value)
            keep.append(array)
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    on_host = set(names) if host is None else set(host)
    for name in names:
        binding.bind_output(name, "cpu" if name in on_host else where)
    session.run_with_iobinding(binding)
    outputs = binding.get_outputs()
    return {name: out.numpy() if name in on_host else out for name, out in zip(names, outputs)}


_pinned_buffers = threading.local()


def _pinned(array: np.ndarray) -> np.ndarray:
    """``array`` copied into this thread's page-locked host buffer (grown as needed), so that the copy
    to the device is one DMA transfer; the array itself where pinned memory is not to be had."""
    if array.dtype != np.float32 or array.nbytes < (64 << 10):
        return np.ascontiguousarray(array)
    buffer = getattr(_pinned_buffers, "buffer", None)
    if buffer is None or buffer.nbytes < array.nbytes:
        try:
            import torch  # noqa: PLC0415  (already a dependency; its allocator pins host memory)

            buffer = torch.empty(array.size, dtype=torch.float32, pin_memory=True).numpy()
        except Exception:  # no CUDA build of torch, or the driver refuses: pageable memory still works
            return np.ascontiguousarray(array)
        _pinned_buffers.buffer = buffer
    view = buffer[: array.size].reshape(array.shape)
    np.copyto(view, array)
    return view


ALLOCATION_FAILURES = ("Failed to allocate memory", "bad_alloc", "bad allocation", "std::bad_array_new_length")


def is_allocation_failure(err: BaseException) -> bool:
    """Whether onnxruntime failed to allocate memory (its errors carry no type for it, only the text)."""
    return type(err).__module__.startswith("onnxruntime") and any(text in str(err) for text in ALLOCATION_FAILURES)


class FixedBatchSession:
    """A session over a model exported with a fixed batch size B (``torch.onnx.export`` writes the
    example's batch unless told otherwise): any number of images run B at a time, the last group
    padded with zeros, and each output is joined along its own batch axis."""

    def __init__(self, session: ort.InferenceSession, input_name: str, batch: int, batch_axes: dict[str, int | None]) -> None:
        self.session, self.input_name, self.batch, self.batch_axes = session, input_name, batch, batch_axes

    def run(self, names: list[str] | None, feeds: dict, *args):
        names = names or [o.name for o in self.session.get_outputs()]
        images = feeds[self.input_name]
        if len(images) == self.batch:
            return self.session.run(names, feeds, *args)
        parts = []
        for start in range(0, len(images), self.batch):
            group = images[start : start + self.batch]
            short = self.batch - len(group)
            if short:
                group = np.concatenate([group, np.zeros((short, *group.shape[1:]), group.dtype)])
            outputs = self.session.run(names, {**feeds, self.input_name: group}, *args)
            parts.append([np.take(np.asarray(out), range(self.batch - short), axis=self._axis(name)) for name, out in zip(names, outputs)])
        return [np.concatenate([p[k] for p in parts], axis=self._axis(name)) for k, name in enumerate(names)]

    def _axis(self, name: str) -> int:
        axis = self.batch_axes.get(name)
        return 0 if axis is None else axis

    def __getattr__(self, name: str):
        return getattr(self.session, name)
