"""The backward of a convolution (a transposed convolution with the same filters) in the forms
onnxruntime runs, and the choice between them.

- ``transposed``: onnxruntime's ``ConvTranspose`` over the whole covered input, cropped to the input;
- ``polyphase``: one ``Conv`` with filters prepacked once at build time (flipped, their channel axes
  swapped). Output position ``t = q s + r`` of a strided backward (phase ``r``) reads the signal at
  ``q - m`` through the taps ``k`` with ``k d = m s + r``: every phase is a stride-1 correlation over
  the signal, and the phases are the output channels of the one ``Conv`` (in-channel, then phase),
  interleaved into the spatial axes afterwards and cropped to the input. Along an axis where every
  tap lands on phase 0 (stride 1, a 1-wide kernel, a dilation the stride divides) only phase 0 is
  computed, with dilation ``d / s``, and the other phases are zeros; at stride 1 this is the plain
  ``Conv`` with flipped filters and the crop folded into its pads.

Both are exact; which is faster depends on the shape and the CPU (measured on a 2-core AMD EPYC at
144 rows: ``polyphase`` 0.5-0.7x the time at stride 1 with many output channels, 5x at 3 of them;
at stride 2 within 0.8-1.9x either way), so the rule lets the builder time both on the layer's own
shape (:meth:`zfnet.server.projection.Builder.fastest`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from zfnet.server.rules.emitter import Emitter
from zfnet.server.rules.geometry import Window


@dataclass(frozen=True)
class Backward:
    """A convolution to transpose: its filters (out, in/group, *kernel), group, window and sizes."""

    weight: np.ndarray
    group: int
    window: Window
    in_spatial: tuple[int, ...]  # the forward input's spatial sizes (what the backward produces)
    out_spatial: tuple[int, ...]  # the forward output's (the signal's)

    @property
    def key(self) -> tuple:
        """What the speed of a form depends on: shapes and geometry, not the filters' values."""
        return (self.weight.shape, self.group, self.window, self.in_spatial, self.out_spatial)


@dataclass(frozen=True)
class _Axis:
    """The polyphase plan of one spatial axis."""

    phases: int  # phases computed: the stride, or 1 where every tap lands on phase 0
    stride: int
    dilation: int  # of the Conv over the signal
    length: int  # taps of the Conv's kernel
    q0: int  # first phase row computed
    rows: int  # phase rows computed
    pads: tuple[int, int]  # of the Conv; negative: that many signal positions cropped first
    crop: int  # offset of the input's first position in the interleaved output

    def tap(self, k: int, d: int) -> tuple[int, int]:
        """(phase, position in the Conv's kernel) of the forward filter's tap ``k``."""
        m, r = divmod(k * d, self.stride)
        return (r if self.phases > 1 else 0), ((self.length - 1) * self.dilation - m) // self.dilation


def _axis(kernel: int, stride: int, dilation: int, begin: int, size: int, out: int) -> _Axis:
    reach = (kernel - 1) * dilation // stride  # the largest signal offset m of a tap
    on_phase_0 = kernel == 1 or dilation % stride == 0
    phases, conv_dilation = (1, max(1, dilation // stride) if kernel > 1 else 1) if on_phase_0 else (stride, 1)
    q0, q1 = begin // stride, -(-(begin + size) // stride)
    rows = q1 - q0
    return _Axis(phases, stride, conv_dilation, reach // conv_dilation + 1, q0, rows, (reach - q0, rows - out + q0), begin - q0 * stride)


def _plan(conv: Backward) -> list[_Axis]:
    win = conv.window
    return [_axis(win.kernel[a], win.strides[a], win.dilations[a], win.begin[a], conv.in_spatial[a], conv.out_spatial[a])
            for a in range(win.rank)]


def prepacked(conv: Backward) -> np.ndarray:
    """The polyphase Conv's filters: (in * phases, out/group, *taps), built once from the forward ones."""
    axes = _plan(conv)
    cout, cin_g, *kernel = conv.weight.shape
    group, cout_g = conv.group, cout // conv.group
    phases = [a.phases for a in axes]
    packed = np.zeros((group * cin_g, *phases, cout_g, *[a.length for a in axes]), np.float32)
    w = conv.weight.astype(np.float32).reshape(group, cout_g, cin_g, *kernel)
    for taps in np.ndindex(*kernel):
        where = [a.tap(k, d) for a, k, d in zip(axes, taps, conv.window.dilations)]
        phase, position = tuple(p for p, _ in where), tuple(j for _, j in where)
        # (group, cout_g, cin_g) -> (group * cin_g, cout_g) at this tap
        packed[(slice(None), *phase, slice(None), *position)] = w[(slice(None), slice(None), slice(None), *taps)].transpose(0, 2, 1).reshape(group * cin_g, cout_g)
    return packed.reshape(group * cin_g * math.prod(phases), cout_g, *[a.length for a in axes])


def polyphase(b: Emitter, signal: str, conv: Backward) -> str:
    """The backward as one Conv with prepacked filters over the signal; at stride 1 its pads crop it to
    the input, else a depthwise ConvTranspose with one-hot filters (kernel = stride, no overlap)
    places each phase at its positions (zeros where no tap lands) and its pads crop."""
    axes = _plan(conv)
    rank = len(axes)
    begin = [max(0, -a.pads[0]) for a in axes]
    stop = [out + min(0, a.pads[1]) for a, out in zip(axes, conv.out_spatial)]
    if any(begin) or stop != list(conv.out_spatial):
        signal = b.op("Slice", [signal, b.const(begin, np.int64), b.const(stop, np.int64), b.const(list(range(2, 2 + rank)), np.int64)])
    pads = [max(0, a.pads[0]) for a in axes] + [max(0, a.pads[1]) for a in axes]
    y = b.op("Conv", [signal, b.const(prepacked(conv))], group=conv.group, dilations=[a.dilation for a in axes], pads=pads)
    if all(a.stride == 1 for a in axes):
        return y
    cin = conv.weight.shape[1] * conv.group
    phases = [a.phases for a in axes]
    place = np.zeros((cin, math.prod(phases), 1, *[a.stride for a in axes]), np.float32)
    for p, phase in enumerate(np.ndindex(*phases)):
        place[(slice(None), p, 0, *phase)] = 1.0
    ends = [a.rows * a.stride - a.crop - n for a, n in zip(axes, conv.in_spatial)]
    return b.op("ConvTranspose", [y, b.const(place.reshape(-1, 1, *[a.stride for a in axes]))],
                strides=[a.stride for a in axes], group=cin, pads=[a.crop for a in axes] + ends)


def transposed(b: Emitter, signal: str, conv: Backward) -> str:
    """The backward as onnxruntime's ConvTranspose, its pads cropping the covered input to the input
    and its output padding adding the input's last positions no window reads."""
    win = conv.window
    covered = win.covered(conv.out_spatial)
    end = [c - a - n for c, a, n in zip(covered, win.begin, conv.in_spatial)]
    extra = [max(0, -e) for e in end]
    weight = b.const(conv.weight.astype(np.float32))
    strides, dilations = list(win.strides), list(win.dilations)
    if all(x < max(s, d) for x, s, d in zip(extra, win.strides, win.dilations)) and all(a < c for a, c in zip(win.begin, covered)):
        return b.op("ConvTranspose", [signal, weight], strides=strides, dilations=dilations, group=conv.group,
                    pads=list(win.begin) + [max(0, e) for e in end], output_padding=extra)
    full = b.op("ConvTranspose", [signal, weight], strides=strides, dilations=dilations, group=conv.group, pads=[0] * 2 * win.rank)
    return b.fit_spatial(full, list(win.begin), list(conv.in_spatial), covered)


Form = Callable[[Emitter, str], str]


def forms(conv: Backward) -> dict[str, Form]:
    """The exact forms of this backward, by name, each taking (emitter, signal) to the input's signal."""
    return {"polyphase": lambda e, signal: polyphase(e, signal, conv), "transposed": lambda e, signal: transposed(e, signal, conv)}
