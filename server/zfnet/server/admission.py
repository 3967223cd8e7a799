"""Admission control by memory: one server-wide budget that requests and loaded models draw on.

Every analysis estimates what it will allocate *before* doing any work, then runs inside a
reservation of that many bytes::

    estimate = Estimate("Deconv of 8 images x 9 channels", {"forward": ..., "reply": ...})
    with budget.reserve(estimate, pin=[model.key]):
        ...  # compute

``reserve`` admits the request at once when the bytes fit; otherwise it first evicts loaded
models and projection sessions that no request is using, least recently used first, then waits
(first come, first served) for running requests to finish, and refuses with RESOURCE_EXHAUSTED
and the numbers when the request can never fit or the wait runs out. Long-lived things (a loaded
model, a cached projection session) are ``hold``-en under a key with a callback that drops them
when they are evicted. When the last request finishes, freed memory is handed back to the
operating system (``release_memory``), so the server's RSS settles after a burst.

What a client streams is counted from the moment it arrives: each call has a :class:`Lease` that
grows with every request message received (waiting for room like a request) and shrinks as the
messages are consumed (an upload's bytes become a model, streamed images are decoded). A job over
many items (a data set, perturbed copies) fits its batch to :func:`room` with a :class:`Cost` and
runs inside one reservation for its state and one batch at a time (and, for images its client
streams, :func:`streamed_room`): nothing inside a job waits for room, so jobs never wait on each
other's progress. A call the client cancelled stops at its next batch or admission
(:func:`check_active`).

Estimates are upper bounds measured on this project's models (see docs/security.md); an
allocation the estimate missed still fails cleanly (onnxruntime's allocation errors become
RESOURCE_EXHAUSTED in the servicer).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import gc
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zfnet.errors import InvalidArgument, ResourceExhausted
from zfnet.tensors import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("zfnet.server")

MIB = 1 << 20
DEFAULT_FRACTION = 0.5  # --max-memory default: this fraction of the machine's (or cgroup's) memory
MAX_INPUT_PIXELS = 4096 * 4096  # default bound on the H x W a model may declare (--max-input-pixels)
DEFAULT_WAIT_S = 60.0  # longest a request waits for budget when the call has no deadline
TRIM_AFTER_BYTES = 32 * MIB  # hand memory back to the OS at once when this much was released, on going idle
TRIM_LATER_S = 1.0  # else once the server has stayed idle this long
REPLY_HEADROOM = 0.97  # a reply may use this share of the message limit (the rest: message framing)
FORWARD_FACTOR = 2  # a forward pass allocates up to about this many times its exposed outputs (measured: 1.4-1.6)
NO_BUDGET = 1 << 40  # the room of a job outside any budget (nothing is lowered)
JOB_SHARE = 0.25  # a batch of a job (data set, perturbed copies) is fitted to this share of the budget
STREAMED_SHARE = 0.125  # a job's streamed images not yet decoded may take this share of the budget
MESSAGE_SHARE = 1 / 16  # the largest request message a server receives, as a share of its budget (see ``message_limit``)

# The gRPC deadline of the call being served (monotonic seconds), set by the servicer.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("zfnet_deadline", default=None)
# Reservations that last until the call being served has ended (see ``rpc_scope``).
_rpc: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("zfnet_rpc", default=None)
# Whether the call being served is still wanted (False once its client cancelled or it was ended).
_active: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("zfnet_active", default=None)
# What the call being served has received and not yet consumed (see ``received``).
_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("zfnet_lease", default=None)


class CallEnded(Exception):
    """The call being served was cancelled by its client (or ended by the server): stop its work."""


def check_active() -> None:
    """Raise :class:`CallEnded` when the call being served is no longer wanted (every admission checks)."""
    active = _active.get()
    if active is not None and not active():
        raise CallEnded("the call was cancelled")


def next_batch() -> None:
    """Between two batches of a job: stop a cancelled call (:func:`check_active`), and hand freed
    heap memory back when the process holds more than its budget accounts for, or when the next
    batch could take it past its budget (:meth:`MemoryBudget.settle`)."""
    check_active()
    lease = _lease.get()
    if lease is not None:
        lease.budget.settle(lease.reserved)


@contextmanager
def rpc_scope(
    budget: MemoryBudget, remaining_s: float | None, on_end: Callable[[Callable[[], None]], bool], active: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Serve one call: reservations made through :func:`admitted` inside it, and the call's lease on
    what it receives (:func:`received`), are released only when the call has ended (``on_end``
    registers the release, e.g. ``ServicerContext.add_callback``), so the reply's protobuf and its
    serialisation stay counted; waits are bounded by the call's deadline; ``active`` says whether
    the client still wants the call (each admission checks, :func:`check_active`)."""
    stack = contextlib.ExitStack()
    lease = stack.enter_context(budget.lease("the request's messages"))
    tokens = (_rpc.set(stack), deadline.set(None if remaining_s is None else time.monotonic() + remaining_s), _active.set(active), _lease.set(lease))
    try:
        yield
    finally:
        _rpc.reset(tokens[0])
        deadline.reset(tokens[1])
        _active.reset(tokens[2])
        _lease.reset(tokens[3])
        if not on_end(stack.close):
            stack.close()


def received(message: object) -> None:
    """Count a request message the call being served has just received (protobuf ``ByteSize``;
    what is decoded from it replaces it) until :func:`consumed` or the call's end; waits for room,
    or refuses with RESOURCE_EXHAUSTED (see :class:`Lease`). Outside a call, nothing."""
    lease = _lease.get()
    size = getattr(message, "ByteSize", None)
    if lease is not None and size is not None:
        lease.grow(size())


def consumed(nbytes: int) -> None:
    """What the call received and has now consumed (about ``nbytes`` of message bytes) no longer counts."""
    lease = _lease.get()
    if lease is not None:
        lease.shrink(nbytes)


@contextmanager
def covering(nbytes: int) -> Iterator[None]:
    """Inside a job whose reservation holds ``nbytes`` for the messages its call streams: the
    call's lease uses them instead of waiting for room (more is refused at once, see :class:`Lease`)."""
    lease = _lease.get()
    if lease is None:
        yield
        return
    lease.covered += nbytes
    try:
        yield
    finally:
        lease.covered -= nbytes
        lease.nbytes = min(lease.nbytes, lease.charged)  # what the job held for is dropped with it


def streamed_room(budget: MemoryBudget | None) -> int:
    """The bytes a job holds for the images its client streams (:func:`covering`)."""
    return int(budget.limit * STREAMED_SHARE) if budget is not None else 0


def message_limit(budget: MemoryBudget) -> int:
    """The largest request message the server receives (gRPC refuses larger ones with
    RESOURCE_EXHAUSTED): :data:`MESSAGE_SHARE` of the budget, at most the protocol's limit. A message
    is held about three times over (gRPC's buffer, its bytes, the parsed message) before it can be
    counted (:func:`received`); measured: eight 100 MiB ImageBatch messages took a 640 MiB server to 701 MiB."""
    return min(MAX_MESSAGE_BYTES, int(budget.limit * MESSAGE_SHARE))


def room(budget: MemoryBudget | None, default: int) -> int:
    """The bytes one batch of a job is fitted to: :data:`JOB_SHARE` of the budget (``default``
    without one). A batch that does not fit the share is lowered; one unit that does not fit the
    whole budget is refused when it is admitted."""
    return int(budget.limit * JOB_SHARE) if budget is not None else default


def admitted(reservation: contextlib.AbstractContextManager[None]) -> contextlib.AbstractContextManager[None]:
    """``reservation`` for a ``with`` block: inside an ``rpc_scope`` it is entered now and released
    when the call has sent its reply (the block's end changes nothing); elsewhere it is the block's."""
    stack = _rpc.get()
    if stack is None:
        return reservation
    stack.enter_context(reservation)
    return contextlib.nullcontext()


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_bytes(text: str, total: int | None = None) -> int:
    """``"8G"``, ``"512MiB"``, ``"1500000000"`` or ``"40%"`` (of ``total``) -> bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if value.endswith("%"):
            if total is None:
                raise ValueError
            return int(total * float(value[:-1]) / 100)
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(value[-1:], 1)
        number = float(value[:-1] if scale > 1 else value)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a memory size; write e.g. 8G, 512M, 2000000000 or 50%") from None
    if number <= 0:
        raise InvalidArgument(f"memory size {text!r} must be positive")
    return int(number * scale)


def machine_memory() -> int:
    """Bytes of memory this process may use: the cgroup limit when one is set, else physical RAM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux ``/proc``), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> None:
    """Free what only reference cycles keep (``gc.collect``: a cancelled call's exception, its
    traceback's frames and the request messages they hold, else freed only at the next full
    collection), then hand freed heap memory back to the operating system (glibc ``malloc_trim``,
    a millisecond or two; a no-op elsewhere)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory_until_idle() -> None:
    """Let glibc keep freed blocks of up to 256 MiB in the heap (mmap threshold) and not trim the heap
    top after every free (trim threshold), so that tensors freed after one run serve the next instead
    of being mapped and faulted in again; ``release_memory`` hands them back when the server is idle.
    Measured on the bundled model, eight layers at batch 64: 3.19 s for 32 runs without it, 1.77 s with
    it (as fast as onnxruntime's own arena), and the same 64 MiB resident after ``malloc_trim``."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


def limit_malloc_arenas(count: int = 2) -> None:
    """At most ``count`` glibc malloc arenas for this process (call before threads start). Each
    request thread otherwise grows its own arena, and their fragments stay resident after a burst
    (measured: 16 concurrent clients left +24% RSS with the default, +5% with 2)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-8, count)  # M_ARENA_MAX


@dataclass(frozen=True)
class Estimate:
    """What a request will allocate, in named parts (bytes), for the reservation and the refusal message."""

    what: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def __str__(self) -> str:
        detail = " + ".join(f"{name} {fmt_bytes(n)}" for name, n in self.parts.items() if n)
        return f"{self.what} needs about {fmt_bytes(self.total)}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class Cost:
    """What one batch of ``n`` items of a job allocates: ``fixed`` bytes plus ``per_item`` bytes
    each, in named parts, for fitting the batch (:meth:`fit`) and admitting it (:meth:`estimate`)."""

    what: str
    per_item: dict[str, int]
    fixed: dict[str, int] = field(default_factory=dict)

    def estimate(self, n: int) -> Estimate:
        parts = {name: n * v for name, v in self.per_item.items()}
        for name, v in self.fixed.items():
            parts[name] = parts.get(name, 0) + v
        return Estimate(self.what.format(n=n), parts)

    def fit(self, wanted: int, room: int) -> int:
        """The largest batch of at most ``wanted`` items whose items fit ``room`` bytes; at least 1
        (the fixed parts are the job's, whatever its batch)."""
        each = max(1, sum(self.per_item.values()))
        return max(1, min(wanted, room // each))


def check_reply(nbytes: int, what: str, advice: str) -> None:
    """Refuse, before computing it, a reply that cannot fit in one gRPC message."""
    limit = int(MAX_MESSAGE_BYTES * REPLY_HEADROOM)
    if nbytes > limit:
        raise ResourceExhausted(
            f"{what}: the reply would be {fmt_bytes(nbytes)}, over the {fmt_bytes(limit)} a message may carry; {advice}",
            reason="REPLY_TOO_LARGE", metadata={"limit": limit, "requested": nbytes},
        )


@dataclass(frozen=True)
class Footprint:
    """Bytes per image of a model's tensors, from the static shapes of its exposed graph (batch = 1)."""

    input: int
    forward: int  # every exposed output together: what one forward pass may allocate per image
    tensors: dict[str, int]  # each exposed output, by name
    weights: int = 0  # the largest initializer, as float32 (what a layer's filters take)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> Footprint:
        initializers = {i.name for i in model.graph.initializer}
        image = next(v for v in model.graph.input if v.name not in initializers)
        tensors = {v.name: value_bytes(v) for v in model.graph.output}
        weights = max((4 * math.prod(i.dims) for i in model.graph.initializer), default=0)
        return cls(value_bytes(image), sum(tensors.values()), tensors, weights)


def value_bytes(value: onnx.ValueInfoProto) -> int:
    """Bytes of one item of a tensor value: dynamic and unknown dimensions count as 1."""
    tensor = value.type.tensor_type
    try:
        from onnx.helper import tensor_dtype_to_np_dtype

        itemsize = tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    count = 1
    for k, dim in enumerate(tensor.shape.dim):
        if k > 0 and dim.HasField("dim_value") and dim.dim_value > 0:
            count *= dim.dim_value
    return count * itemsize


@dataclass
class _Resident:
    nbytes: int
    what: str
    evict: Callable[[], object] | None  # None: held until released, never evicted


class Lease:
    """What a call has received and not yet consumed (see :meth:`MemoryBudget.lease`). Outside a
    job, each :meth:`grow` is charged to the budget (waiting for room, or refused when it can never
    fit); inside a job (:func:`covering`) the job's own reservation covers up to ``covered`` bytes,
    and more is refused at once, so a job never waits on room that only its own progress frees.
    :meth:`shrink` gives bytes back; the rest goes when the lease ends."""

    def __init__(self, budget: MemoryBudget, what: str) -> None:
        self.budget, self.what = budget, what
        self.nbytes = 0  # received and not consumed
        self.charged = 0  # of which charged to the budget (the rest is covered by the call's job)
        self.covered = 0
        self.reserved = 0  # what the call's open reservations hold (see MemoryBudget.reserve)

    def grow(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        excess = self.nbytes + nbytes - self.covered - self.charged
        if excess > 0 and self.covered:
            raise ResourceExhausted(
                f"{self.what}: {fmt_bytes(self.nbytes + nbytes)} received and not yet decoded, over the {fmt_bytes(self.covered)} "
                "this server holds for a job's streamed images; send smaller ImageBatch messages",
                reason="OVER_MEMORY_BUDGET", metadata={"limit": self.covered, "requested": self.nbytes + nbytes},
            )
        if excess > 0:
            self.budget._grow(self, excess)
        self.nbytes += nbytes

    def shrink(self, nbytes: int) -> None:
        self.nbytes = max(0, self.nbytes - max(0, nbytes))
        self.budget._shrink(self, self.charged - max(0, self.nbytes - self.covered))


class MemoryBudget:
    """A byte budget shared by every request and every loaded model of one server.

    ``limit`` is what requests and models may take together (``--max-memory`` less the memory
    the process held at start). Thread-safe; every method is cheap.
    """

    def __init__(
        self, limit: int, wait_s: float = DEFAULT_WAIT_S, on_idle: Callable[[], None] | None = release_memory, trim_later_s: float = TRIM_LATER_S,
    ) -> None:
        self.limit = int(limit)
        self.wait_s = wait_s
        self._on_idle = on_idle
        self._trim_later_s = trim_later_s
        self._cond = threading.Condition()
        self._requests = 0  # bytes of running requests
        self._running = 0
        self._resident: OrderedDict[Hashable, _Resident] = OrderedDict()  # least recently used first
        self._pins: dict[Hashable, int] = {}
        self._queue: deque[object] = deque()
        self._released = 0  # bytes released since memory was last handed back
        self._timer: threading.Timer | None = None
        self._base = rss_bytes()  # what the process held when the budget was made

    def settle(self, batch: int = 0) -> None:
        """Hand freed heap memory back now when the process holds :data:`TRIM_AFTER_BYTES` more than
        it did at start plus what the budget accounts for, or when what it holds and a next batch of
        ``batch`` bytes together would pass the budget. The heap keeps freed tensors for the next
        run (:func:`keep_freed_memory_until_idle`), but large ones of a long job fragment it (a conv
        layer of 32 MiB per image, one image per batch, grew it by 580 MiB over ten batches), and what
        earlier requests freed may still be kept when a job starts (a features job of 64 MiB layers
        peaked 150 MiB past the budget on top of it)."""
        if self._on_idle is None:
            return
        with self._cond:
            accounted = self._base + self.used
            allowed = self._base + self.limit
        held = rss_bytes()
        if held > accounted + TRIM_AFTER_BYTES or held + batch > allowed:
            self._on_idle()

    @classmethod
    def for_process(cls, max_memory: int | None = None, **kwargs) -> MemoryBudget:
        """The budget of a server process whose RSS must stay under ``max_memory`` (default: half
        the machine's memory): that less what the process holds now and a margin for what is not
        estimated (threads, onnxruntime's own structures, gRPC buffers)."""
        total = max_memory if max_memory is not None else int(machine_memory() * DEFAULT_FRACTION)
        held = rss_bytes()
        limit = total - held - max(64 * MIB, total // 10)
        if limit < 64 * MIB:
            raise InvalidArgument(
                f"--max-memory {fmt_bytes(total)} leaves no room: the server already holds {fmt_bytes(held)} "
                f"and keeps a margin of {fmt_bytes(max(64 * MIB, total // 10))}; give it more"
            )
        return cls(limit, **kwargs)

    # -- what is in use -------------------------------------------------------------------
    @property
    def resident(self) -> int:
        return sum(r.nbytes for r in self._resident.values())

    @property
    def used(self) -> int:
        return self._requests + self.resident

    def status(self) -> dict[str, int]:
        """Bytes in use by requests and by held models, the limit, and how many requests run or wait."""
        with self._cond:
            return {"limit": self.limit, "requests": self._requests, "resident": self.resident, "running": self._running, "waiting": len(self._queue)}

    def held(self, key: Hashable) -> int:
        """Bytes held under ``key`` (0 when nothing is)."""
        with self._cond:
            return self._resident[key].nbytes if key in self._resident else 0

    # -- requests -------------------------------------------------------------------------
    @contextmanager
    def reserve(self, estimate: Estimate, pin: Iterable[Hashable] = (), timeout: float | None = None) -> Iterator[None]:
        """Run the block with ``estimate.total`` bytes reserved, keeping the ``pin`` ed residents
        loaded; wait for room (at most ``timeout`` s, else the call's deadline or ``wait_s``), or
        refuse with ResourceExhausted."""
        check_active()
        need = max(0, estimate.total)
        pins = list(pin)
        victims: list[_Resident] = []
        with self._cond:
            for key in pins:
                self._pins[key] = self._pins.get(key, 0) + 1
            try:
                victims = self._admit(estimate, need, pins, self._deadline(timeout))
            except BaseException:
                self._unpin(pins)
                raise
            self._requests += need
            self._running += 1
        self._evict(victims)
        lease = _lease.get()
        if lease is not None:
            lease.reserved += need
        try:
            yield
        finally:
            if lease is not None:
                lease.reserved -= need
            with self._cond:
                self._requests -= need
                self._running -= 1
                self._released += need
                self._unpin(pins)
                now = self._idle()
                self._cond.notify_all()
            if now:
                self._hand_back()

    @contextmanager
    def lease(self, what: str) -> Iterator[Lease]:
        """A reservation that starts empty and grows with what arrives (an upload's chunks, streamed
        images), released when the block ends; it counts as a running request meanwhile."""
        lease = Lease(self, what)
        with self._cond:
            self._running += 1
        try:
            yield lease
        finally:
            with self._cond:
                self._requests -= lease.charged
                self._released += lease.charged
                lease.nbytes = lease.charged = 0
                self._running -= 1
                now = self._idle()
                self._cond.notify_all()
            if now:
                self._hand_back()

    def _grow(self, lease: Lease, nbytes: int) -> None:
        check_active()
        estimate = Estimate(lease.what, {"received": lease.charged + nbytes})
        with self._cond:
            victims = self._admit(estimate, nbytes, [], self._deadline(None), held=lease.charged)
            self._requests += nbytes
            lease.charged += nbytes
        self._evict(victims)

    def _shrink(self, lease: Lease, nbytes: int) -> None:
        with self._cond:
            given = min(max(0, nbytes), lease.charged)
            lease.charged -= given
            self._requests -= given
            self._released += given
            self._cond.notify_all()

    def _idle(self) -> bool:
        """Under the lock, after something was released: True to hand memory back now (a lot was
        released and nothing runs); else, if nothing runs, hand it back once idle a while."""
        if self._on_idle is None or self._running or not self._released:
            return False
        if self._released >= TRIM_AFTER_BYTES:
            self._released = 0
            return True
        if self._timer is None:
            self._timer = threading.Timer(self._trim_later_s, self._trim_if_idle)
            self._timer.daemon = True
            self._timer.start()
        return False

    def _hand_back(self) -> None:
        """Hand memory back to the system, when this budget was given a way to (``on_idle``)."""
        if self._on_idle is not None:
            self._on_idle()

    def _trim_if_idle(self) -> None:
        with self._cond:
            self._timer = None
            now = self._running == 0 and self._released > 0
            if now:
                self._released = 0
        if now:
            self._hand_back()

    def _deadline(self, timeout: float | None) -> float:
        now = time.monotonic()
        if timeout is not None:
            return now + timeout
        call = deadline.get()
        return min(call, now + self.wait_s) if call is not None else now + self.wait_s

    def _admit(self, estimate: Estimate, need: int, pins: list[Hashable], until: float, held: int = 0) -> list[_Resident]:
        """Under the lock: make room for ``need`` more bytes (the caller holds ``held`` already) or
        raise; returns the residents evicted."""
        pinned = sum(self._resident[k].nbytes for k in set(pins) if k in self._resident)
        kept = [r for r in self._resident.values() if r.evict is None]
        fixed = sum(r.nbytes for r in kept)
        if need + held + pinned + fixed > self.limit:
            raise ResourceExhausted(
                f"{estimate}; this server's memory budget is {fmt_bytes(self.limit)}"
                + (f" ({fmt_bytes(pinned)} of it held by the model)" if pinned else "")
                + "".join(f" ({fmt_bytes(r.nbytes)} of it kept for {r.what})" for r in kept)
                + ": send fewer images, layers or channels per request",
                reason="OVER_MEMORY_BUDGET", metadata={"limit": self.limit, "requested": need + held + pinned},
            )
        ticket = object()
        self._queue.append(ticket)
        victims: list[_Resident] = []
        try:
            while True:
                if self._queue[0] is ticket:
                    victims += self._make_room(need)
                    if self.used + need <= self.limit:
                        return victims
                left = until - time.monotonic()
                if left <= 0:
                    raise ResourceExhausted(
                        f"server busy: {estimate}, and {fmt_bytes(self.used)} of its {fmt_bytes(self.limit)} memory budget is in use "
                        f"by {self._running} running request(s) and loaded models; retry later or send a smaller request",
                        reason="OVER_MEMORY_BUDGET", metadata={"limit": self.limit, "in_use": self.used, "requested": need},
                    )
                self._cond.wait(left)
        finally:
            self._queue.remove(ticket)
            self._cond.notify_all()

    def _make_room(self, need: int) -> list[_Resident]:
        """Under the lock: drop least recently used residents nobody pins until ``need`` fits."""
        victims = []
        for key in list(self._resident):
            if self.used + need <= self.limit:
                break
            if self._pins.get(key) or self._resident[key].evict is None:
                continue
            victims.append(self._resident.pop(key))
            log.info("evicted %s (%s) to make room", victims[-1].what, fmt_bytes(victims[-1].nbytes))
        return victims

    def _unpin(self, pins: list[Hashable]) -> None:
        for key in pins:
            self._pins[key] -= 1
            if not self._pins[key]:
                del self._pins[key]

    def _evict(self, victims: list[_Resident]) -> None:
        """Outside the lock: let the owners drop what was evicted (the list is emptied, so that
        nothing here keeps the evicted objects alive)."""
        freed = 0
        while victims:
            victim = victims.pop()
            freed += victim.nbytes
            try:
                if victim.evict is not None:
                    victim.evict()
            except Exception:  # an owner's bug must not fail the request that made room
                log.exception("evicting %s failed", victim.what)
            del victim
        if freed:
            with self._cond:
                self._released += freed

    # -- long-lived residents ---------------------------------------------------------------
    def hold(self, key: Hashable, nbytes: int, what: str, evict: Callable[[], object] | None) -> None:
        """Account for something that stays loaded (a model, a projection session) until it is
        ``release`` d, or evicted (``evict`` is then called) to make room; ``evict`` None: never
        evicted (room kept for a purpose). Never waits: it makes room by evicting others and may
        leave the budget over-committed until requests finish."""
        with self._cond:
            self._resident.pop(key, None)
            self._resident[key] = _Resident(int(nbytes), what, evict)
            self._pins[key] = self._pins.get(key, 0) + 1  # not itself a victim of its own room-making
            try:
                victims = self._make_room(0)
            finally:
                self._unpin([key])
        self._evict(victims)

    def touch(self, key: Hashable) -> None:
        """Mark a resident as just used (least recently used is evicted first)."""
        with self._cond:
            if key in self._resident:
                self._resident.move_to_end(key)

    def release(self, key: Hashable) -> bool:
        """Forget a resident its owner dropped; False when it was not held."""
        with self._cond:
            gone = self._resident.pop(key, None)
            held, now = gone is not None, False
            if gone is not None:
                self._released += gone.nbytes
                now = self._idle()
                self._cond.notify_all()
        del gone  # the owner's object may go with it before memory is handed back
        if now:
            self._hand_back()
        return held
