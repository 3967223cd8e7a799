"""Side-by-side timing for benchmarks on a shared machine: contenders run interleaved, round after
round in a rotating order, so that a change of load touches all of them alike; each figure comes
with the machine (CPU model, vector extensions, cores), the load average and the peak memory."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict


class Cpu(TypedDict):
    model: str
    vector: list[str]  # of avx2, fma, avx512f, avx512bw, avx512_vnni, avx512_bf16, amx_tile
    cores: int


def cpu() -> Cpu:
    """CPU model, its vector extensions (from /proc/cpuinfo's flags) and the cores this process may use."""
    model, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return {"model": model, "vector": vector, "cores": len(os.sched_getaffinity(0))}


def machine() -> str:
    """The CPU in one line: model, vector extensions, cores."""
    c = cpu()
    return f"{c['model']} ({', '.join(c['vector']) or 'no AVX2'}), {c['cores']} cores"


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def _status(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status, in bytes (0 where there is none)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) << 10
    return 0


def _reset_peak() -> None:
    """Start VmHWM again from the current resident size (Linux: ``5`` into clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@dataclass
class Timing:
    """The runs of one contender: wall times (s) and its largest peak resident size above where it started."""

    times: list[float]
    peak: int = 0

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, Timing], tuple[float, float]]:
    """Each contender once as a warm-up, then ``rounds`` rounds of one run each, the order rotating
    every round. The timings by name, and the load average before and after."""
    names = list(contenders)
    for name in names:
        contenders[name]()
    timings = {name: Timing([]) for name in names}
    before = load()
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            _reset_peak()
            start_rss = _status("VmRSS")
            start = time.perf_counter()
            contenders[name]()
            timings[name].times.append(time.perf_counter() - start)
            timings[name].peak = max(timings[name].peak, _status("VmHWM") - start_rss)
    return timings, (before, load())


def mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB"
