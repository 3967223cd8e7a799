"""The running top-k state: any split into shards and batches, merged in any order, equals a brute-force sort."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfnet.errors import InvalidArgument, NotFound
from zfnet.topk import EMPTY, MAX_SKIPPED_NAMED, TopK
from zfnet.wire.common import Skipped
from zfnet.wire.top import state_of, state_proto

CHANNELS = np.array([0, 2, 3])
TRACKED = {"conv": CHANNELS, "fc": CHANNELS, "whole": np.arange(4)}  # "whole": every channel, NaNs among the values


def number(x: float) -> float | str:
    """A value as compared in these tests: NaN equal to NaN."""
    return "nan" if np.isnan(x) else float(x)


def brute_force(acts: dict[str, np.ndarray], k: int, by: str, skip: AbstractSet[int] = frozenset()) -> dict[str, list[list[tuple]]]:
    """Per layer and tracked channel: every image's (value, index, peak, location), sorted in Python, first k."""
    out = {}
    for name, act in acts.items():
        per_channel = []
        for c in TRACKED[name]:
            rows = []
            for i in range(act.shape[0]):
                if i in skip:
                    continue
                fmap = act[i, c]
                flat = fmap.reshape(-1)
                where = int(np.argmax(flat))
                value = float(flat.max()) if by == "max" else float(np.float32(flat.astype(np.float64).mean()))
                rows.append((value, i, float(flat[where]), tuple(int(p) for p in np.unravel_index(where, fmap.shape))))
            rows.sort(key=lambda r: (np.isnan(r[0]), 0.0 if np.isnan(r[0]) else -r[0], r[1]))  # NaN last
            per_channel.append([(number(v), i, number(p), at) for v, i, p, at in rows[:k]])
        out[name] = per_channel
    return out


def as_lists(state: TopK) -> dict[str, list[list[tuple]]]:
    out = {}
    for name, top in state.layers.items():
        out[name] = [
            [(number(top.values[c, r]), int(top.indices[c, r]), number(top.activations[c, r]), tuple(int(p) for p in top.locations[c, r]))
             for r in range(state.k) if top.indices[c, r] != EMPTY]
            for c in range(len(top.channels))
        ]
    return out


def empty(n: int, k: int, by: str, names: tuple[str, ...] = ("conv", "fc")) -> TopK:
    ranks = {"conv": 2, "fc": 0, "whole": 2}
    return TopK.empty("sha", "dataset:test", n, k, by, {name: (TRACKED[name], ranks[name]) for name in names})


def scan(acts: dict[str, np.ndarray], start: int, stop: int, cuts: list[int], k: int, by: str) -> TopK:
    """One shard [start, stop), read in batches split at ``cuts``."""
    state = empty(next(iter(acts.values())).shape[0], k, by, tuple(acts))
    edges = [start, *sorted(c for c in set(cuts) if start < c < stop), stop]
    for a, b in zip(edges, edges[1:]):
        state.observe({name: act[a:b] for name, act in acts.items()}, np.arange(a, b))
        state.cover(a, b)
    return state


@st.composite
def jobs(draw):
    n = draw(st.integers(1, 40))
    values = st.integers(0, 3)  # few distinct values: many ties
    conv = np.asarray(draw(st.lists(values, min_size=n * 4 * 6, max_size=n * 4 * 6)), np.float32).reshape(n, 4, 2, 3)
    fc = np.asarray(draw(st.lists(values, min_size=n * 4, max_size=n * 4)), np.float32).reshape(n, 4)
    whole = np.asarray(draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, np.nan]), min_size=n * 4 * 2, max_size=n * 4 * 2)), np.float32).reshape(n, 4, 2, 1)
    shards = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=4)))) if n > 1 else []
    batches = draw(st.lists(st.integers(1, n), max_size=8))
    k = draw(st.integers(1, 12))
    by = draw(st.sampled_from(["max", "mean"]))
    order = draw(st.permutations(range(len(shards) + 1)))
    return {"conv": conv, "fc": fc, "whole": whole}, shards, batches, k, by, order


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(jobs())
def test_any_shards_and_batches_merged_in_any_order_equal_brute_force(job) -> None:
    acts, shards, cuts, k, by, order = job
    n = acts["conv"].shape[0]
    edges = [0, *shards, n]
    states = [scan(acts, a, b, cuts, k, by) for a, b in zip(edges, edges[1:])]
    reference = brute_force(acts, k, by)
    left = states[order[0]]  # fold left in a random order...
    for i in order[1:]:
        left = left.merge(states[i])
    right = states[order[-1]]  # ...and right, in the reverse order
    for i in reversed(order[:-1]):
        right = states[i].merge(right)
    for merged in (left, right):
        assert as_lists(merged) == reference
        assert merged.covered == [(0, n)] and merged.images_read == n
    assert as_lists(scan(acts, 0, n, [], k, by)) == reference


def test_fewer_images_than_k_leave_empty_slots_and_nan_ranks_last() -> None:
    acts = {"conv": np.zeros((3, 4, 1, 1), np.float32), "fc": np.asarray([[1, 1, np.nan, 1], [2, 2, 5, 2], [0, 0, 1, 0]], np.float32)}
    state = scan(acts, 0, 3, [1], 5, "max")
    fc = state.layers["fc"]
    assert fc.indices.tolist() == [[1, 0, 2, EMPTY, EMPTY], [1, 2, 0, EMPTY, EMPTY], [1, 0, 2, EMPTY, EMPTY]]  # channel 2: NaN last
    assert np.isneginf(fc.values[:, 3:]).all()
    assert state.layers["conv"].indices[:, :3].tolist() == [[0, 1, 2]] * 3  # all tied at 0: by index
    assert state.winner_indices().tolist() == [0, 1, 2]


def test_reading_an_image_twice_or_merging_overlaps_is_refused() -> None:
    acts = {"conv": np.ones((6, 4, 1, 1), np.float32), "fc": np.ones((6, 4), np.float32)}
    a, b = scan(acts, 0, 4, [], 2, "max"), scan(acts, 3, 6, [], 2, "max")
    with pytest.raises(InvalidArgument, match=r"both read indices \[3, 4\)"):
        a.merge(b)
    with pytest.raises(InvalidArgument, match="image 2 was read already"):
        a.observe({n: v[2:3] for n, v in acts.items()}, np.asarray([2]))
    with pytest.raises(InvalidArgument, match=r"indices \[3, 4\) were read already"):
        a.cover(3, 5)
    for other, what in ((scan(acts, 4, 6, [], 3, "max"), "k"), (scan(acts, 4, 6, [], 2, "mean"), "by")):
        with pytest.raises(InvalidArgument, match=f"differ in {what}"):
            a.merge(other)
    fewer = TopK.empty("sha", "dataset:test", 6, 2, "max", {"conv": (CHANNELS[:2], 2), "fc": (CHANNELS, 0)})
    with pytest.raises(InvalidArgument, match="different channels of layer 'conv'"):
        a.merge(fewer)
    with pytest.raises(InvalidArgument, match="k must be positive"):
        empty(6, 0, "max")


def test_remaining_ranges_and_skipped_images_survive_merges() -> None:
    state = empty(100, 3, "max")
    state.cover(10, 20, [Skipped(12, "a/12.jpg", "cannot decode")])
    state.cover(40, 50)
    assert state.remaining() == [(0, 10), (20, 40), (50, 100)]
    assert state.remaining(15, 45) == [(20, 40)]
    other = empty(100, 3, "max")
    many = [Skipped(i, f"b/{i}.jpg", "cannot read") for i in range(60, 60 + MAX_SKIPPED_NAMED + 5)]
    other.cover(60, 100, many)
    merged = other.merge(state)
    assert merged.skipped_count == MAX_SKIPPED_NAMED + 6
    assert [s.index for s in merged.skipped] == [12, *range(60, 60 + MAX_SKIPPED_NAMED - 1)]
    assert merged.covered == [(10, 20), (40, 50), (60, 100)]


def test_save_load_and_the_wire_form_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    acts = {"conv": rng.normal(size=(30, 4, 2, 3)).astype(np.float32), "fc": rng.normal(size=(30, 4)).astype(np.float32)}
    state = scan(acts, 5, 30, [9, 17], 4, "mean")
    state.cover(0, 2, [Skipped(1, "x.jpg", "cannot decode")])
    for copy in (TopK.load(state.save(tmp_path / "s.npz")), state_of(state_proto(state))):
        assert as_lists(copy) == as_lists(state)
        assert (copy.model, copy.data, copy.size, copy.k, copy.by, copy.covered, copy.skipped, copy.skipped_count) == (
            state.model, state.data, state.size, state.k, state.by, state.covered, state.skipped, state.skipped_count)
    assert not list(tmp_path.glob("*.writing"))
    (tmp_path / "bad.npz").write_bytes(b"not a state")
    with pytest.raises(InvalidArgument, match="not a zfnet top-k state"):
        TopK.load(tmp_path / "bad.npz")
    with pytest.raises(NotFound, match="no top-k state"):
        TopK.load(tmp_path / "missing.npz")
    message = state_proto(state)
    message.layers[0].indices.shape[:] = [3, 3]
    message.layers[0].indices.data = message.layers[0].indices.data[: 3 * 3 * 8]
    with pytest.raises(InvalidArgument, match="do not fit 3 channels x k=4"):
        state_of(message)
