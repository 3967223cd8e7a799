"""The memory budget on its own: admit, refuse with the numbers, wait first come first served,
evict least recently used residents that nobody pins, and hand memory back when idle."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.server.admission import MIB, TRIM_AFTER_BYTES, Estimate, MemoryBudget, fmt_bytes, parse_bytes, release_memory

TIMEOUT = 30


def until(condition, what: str, wait_s: float = TIMEOUT) -> None:
    """Wait for another thread to reach a state (synchronisation, not a timing assertion)."""
    end = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < end, f"never reached: {what}"
        time.sleep(0.005)


class Holder(threading.Thread):
    """A request that reserves ``nbytes`` and holds them until told to finish."""

    def __init__(self, budget: MemoryBudget, nbytes: int, name: str, timeout: float | None = TIMEOUT) -> None:
        super().__init__(daemon=True)
        self.budget, self.nbytes, self.what, self.timeout = budget, nbytes, name, timeout
        self.entered, self.finish = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.budget.reserve(Estimate(self.what, {"work": self.nbytes}), timeout=self.timeout):
                self.entered.set()
                self.finish.wait(TIMEOUT)
        except BaseException as err:  # noqa: BLE001 - inspected by the test
            self.error = err


def test_a_request_that_fits_is_admitted_and_released() -> None:
    budget = MemoryBudget(100 * MIB, on_idle=None)
    with budget.reserve(Estimate("a", {"x": 60 * MIB, "y": 30 * MIB})):
        assert budget.status()["requests"] == 90 * MIB
    assert budget.status() == {"limit": 100 * MIB, "requests": 0, "resident": 0, "running": 0, "waiting": 0}


def test_a_request_that_can_never_fit_is_refused_at_once_with_the_numbers() -> None:
    budget = MemoryBudget(100 * MIB, on_idle=None)
    with pytest.raises(ResourceExhausted) as info:
        with budget.reserve(Estimate("Deconv of 9 images", {"forward pass": 80 * MIB, "reply": 40 * MIB}), timeout=TIMEOUT):
            pytest.fail("admitted")
    message = str(info.value)
    for words in ("Deconv of 9 images", "120.0 MiB", "forward pass 80.0 MiB", "reply 40.0 MiB", "budget is 100.0 MiB"):
        assert words in message, message


def test_requests_wait_for_room_first_come_first_served() -> None:
    budget = MemoryBudget(100 * MIB, on_idle=None)
    first = Holder(budget, 70 * MIB, "first")
    big = Holder(budget, 60 * MIB, "big")  # waits for first
    small = Holder(budget, 20 * MIB, "small")  # would fit now, but queues behind big
    first.start()
    assert first.entered.wait(TIMEOUT)
    big.start()
    until(lambda: budget.status()["waiting"] == 1, "big waits")
    small.start()
    until(lambda: budget.status()["waiting"] == 2, "small waits behind big")
    assert not small.entered.is_set() and not big.entered.is_set()
    first.finish.set()
    assert big.entered.wait(TIMEOUT) and small.entered.wait(TIMEOUT), "both fit once first is done"
    assert budget.status()["requests"] == 80 * MIB
    big.finish.set()
    small.finish.set()
    for t in (first, big, small):
        t.join(TIMEOUT)
        assert t.error is None, t.error
    assert budget.status()["requests"] == 0


def test_a_wait_past_its_deadline_is_refused() -> None:
    budget = MemoryBudget(100 * MIB, on_idle=None)
    first = Holder(budget, 90 * MIB, "first")
    first.start()
    assert first.entered.wait(TIMEOUT)
    late = Holder(budget, 50 * MIB, "late", timeout=0.05)
    late.start()
    late.join(TIMEOUT)
    assert isinstance(late.error, ResourceExhausted)
    assert "server busy" in str(late.error) and "90.0 MiB of its 100.0 MiB" in str(late.error)
    assert budget.status()["waiting"] == 0
    first.finish.set()
    first.join(TIMEOUT)


def test_residents_are_evicted_least_recently_used_and_pins_are_kept() -> None:
    budget = MemoryBudget(100 * MIB, on_idle=None)
    evicted: list[str] = []
    for name in ("a", "b", "c"):
        budget.hold(name, 30 * MIB, name, lambda name=name: evicted.append(name))
    budget.touch("a")  # order now b, c, a
    with budget.reserve(Estimate("r", {"x": 40 * MIB}), pin=["b"]):
        assert evicted == ["c"], "b is pinned; c is the least recently used of the rest"
    assert budget.held("a") and budget.held("b") and not budget.held("c")
    with pytest.raises(ResourceExhausted, match="60.0 MiB of it held by the model"):
        with budget.reserve(Estimate("r", {"x": 50 * MIB}), pin=["a", "b"], timeout=TIMEOUT):
            pass
    assert budget.release("a") and not budget.release("a")
    assert budget.status()["resident"] == 30 * MIB


def test_hold_makes_room_by_evicting_others_never_itself() -> None:
    budget = MemoryBudget(100 * MIB, on_idle=None)
    evicted: list[str] = []
    budget.hold("old", 60 * MIB, "old", lambda: evicted.append("old"))
    budget.hold("new", 70 * MIB, "new", lambda: evicted.append("new"))
    assert evicted == ["old"] and budget.held("new") == 70 * MIB


def test_memory_is_handed_back_when_the_last_request_ends() -> None:
    trims: list[int] = []
    budget = MemoryBudget(1 << 40, on_idle=lambda: trims.append(1), trim_later_s=3600)
    with budget.reserve(Estimate("small", {"x": TRIM_AFTER_BYTES // 4})):
        pass
    assert trims == [], "a small request does not trim at once"
    outer = Holder(budget, TRIM_AFTER_BYTES, "outer")
    outer.start()
    assert outer.entered.wait(TIMEOUT)
    with budget.reserve(Estimate("big", {"x": 2 * TRIM_AFTER_BYTES})):
        pass
    assert trims == [], "not while another request runs"
    outer.finish.set()
    outer.join(TIMEOUT)
    assert trims == [1]


@pytest.mark.parametrize("text, total, expected", [
    ("8G", None, 8 << 30), ("512M", None, 512 << 20), ("512MiB", None, 512 << 20), ("1.5g", None, int(1.5 * (1 << 30))),
    ("2000000000", None, 2_000_000_000), ("50%", 1000, 500),
])
def test_parse_bytes(text: str, total: int | None, expected: int) -> None:
    assert parse_bytes(text, total) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "%", "50%x"])
def test_parse_bytes_refuses_nonsense(text: str) -> None:
    with pytest.raises(InvalidArgument, match="memory size"):
        parse_bytes(text, 1000)


def test_fmt_bytes() -> None:
    assert [fmt_bytes(n) for n in (12, 1536, 3 << 20, 5 << 30)] == ["12 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]


def test_for_process_refuses_a_limit_below_what_it_holds() -> None:
    with pytest.raises(InvalidArgument, match="leaves no room"):
        MemoryBudget.for_process(16 * MIB)


def test_memory_is_handed_back_once_idle_a_while() -> None:
    trims: list[int] = []
    budget = MemoryBudget(1 << 40, on_idle=lambda: trims.append(1), trim_later_s=0.05)
    budget.hold("model", 10 * MIB, "model", lambda: None)
    for _ in range(3):
        with budget.reserve(Estimate("small", {"x": MIB})):
            pass
    assert budget.release("model")
    until(lambda: trims, "a trim once idle")
    assert trims == [1], "one trim for the whole idle spell"


class _Frame:
    """Stands for a cancelled call's traceback frame: it refers to itself and holds the request's bytes."""

    def __init__(self) -> None:
        self.me = self
        self.request = bytearray(MIB)


def test_going_idle_frees_what_only_reference_cycles_keep() -> None:
    """Soak phase 2: each call the idle watchdog cancelled left ~2 MiB in a reference cycle (its
    exception's traceback frames, holding the request messages) until the next full collection,
    so RSS climbed by about 45 MiB per 20 cancelled uploads between collections."""
    enabled = gc.isenabled()
    gc.disable()  # no automatic collection in between: only release_memory may free the cycle
    try:
        full_collections = gc.get_stats()[2]["collections"]
        held = _Frame()
        freed = weakref.ref(held)
        del held
        assert freed() is not None
        release_memory()
        assert gc.get_stats()[2]["collections"] == full_collections + 1, "release_memory ran no full collection"
        assert freed() is None or gc.get_referrers(freed()) != [freed().__dict__], "the cycle survived a full collection"
    finally:
        if enabled:
            gc.enable()

