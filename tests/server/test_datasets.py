"""Data sets for jobs: named folders under --data-dir and client-streamed images read the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from zfnet import imagefolder
from zfnet.client.api import Client
from zfnet.errors import InvalidArgument, NotFound
from zfnet.preprocessing import Framing
from zfnet.server.app import create_server
from zfnet.server.datasets import DatasetStore, streamed_source
from zfnet.server.images import ImageInput, to_batch

SHAPE = Framing(32, 32)  # a 32x32 RGB model input, images resized to it


@pytest.fixture()
def data_dir(tmp_path: Path, sample_images: list[Path]) -> Path:
    """``root/cifar/small/<class>/*.jpg`` (3 classes x 4 images, one of them corrupt) and ``root/flat/<class>``."""
    root = tmp_path / "data"
    for path in sample_images:
        if path.parent.name in ("bird", "cat", "dog") and int(path.stem) < 4:
            target = root / "cifar" / "small" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    (root / "cifar" / "small" / "cat" / "0002.jpg").write_bytes(b"not a jpeg")
    (root / "flat" / "one").mkdir(parents=True)
    shutil.copy(sample_images[0], root / "flat" / "one" / "a.jpg")
    (root / "notes").mkdir()
    return root


def reference(folder: imagefolder.ImageFolder, start: int, stop: int) -> tuple[list[int], np.ndarray]:
    """Indices and inputs decoded one file at a time, the corrupt file left out."""
    kept, inputs = [], []
    for i in range(start, stop):
        try:
            inputs.append(to_batch([ImageInput(encoded=folder.files[i].read_bytes())], SHAPE)[0])
            kept.append(i)
        except InvalidArgument:
            pass
    return kept, np.stack(inputs)


def test_store_discovers_data_sets_by_relative_name(data_dir: Path) -> None:
    store = DatasetStore(data_dir)
    assert store.names() == ["cifar/small", "flat"]
    folder = store.folder("cifar/small")
    assert folder.classes == ["bird", "cat", "dog"] and len(folder) == 12
    for bad in ("notes", "../data", str(data_dir / "flat"), "cifar", ""):
        with pytest.raises(NotFound, match="cifar/small, flat"):
            store.folder(bad)


def test_a_data_set_follows_linked_folders_only_inside_the_root(data_dir: Path, tmp_path: Path, sample_images: list[Path]) -> None:
    outside = tmp_path / "outside" / "deep"
    outside.mkdir(parents=True)
    shutil.copy(sample_images[1], outside / "secret.jpg")
    small = data_dir / "cifar" / "small"
    (small / "dog" / "away").symlink_to(outside.parent, target_is_directory=True)  # leads out of the root: not walked
    (small / "dog" / "again").symlink_to(data_dir / "flat" / "one", target_is_directory=True)  # stays inside the root: followed
    folder = DatasetStore(data_dir).folder("cifar/small")
    names = [f.relative_to(small).as_posix() for f in folder.files]
    assert not any(n.startswith("dog/away") for n in names), names
    assert names.count("dog/again/a.jpg") == 1 and len(folder) == 13
    assert len(imagefolder.scan(small).files) == 14  # a client reads its own links wherever they lead


@pytest.mark.parametrize("start,stop,batch", [(0, 0, 5), (3, 10, 4), (5, 6, 64)])
def test_folder_and_streamed_sources_give_the_same_batches(data_dir: Path, start: int, stop: int, batch: int) -> None:
    store = DatasetStore(data_dir)
    folder = store.folder("cifar/small")
    named = list(store.source("cifar/small", start, stop, batch).batches(SHAPE))
    end = stop or len(folder)
    parts = [
        (b, [ImageInput(encoded=folder.files[i].read_bytes(), label=folder.files[i].relative_to(folder.root).as_posix()) for i in range(b, min(b + 3, end))],
         [int(x) for x in folder.labels[b : min(b + 3, end)]])
        for b in range(start, end, 3)
    ]
    streamed = list(streamed_source(len(folder), folder.classes, parts, start, stop, batch).batches(SHAPE))
    kept, inputs = reference(folder, start, end)
    for batches in (named, streamed):
        assert all(len(b.indices) + len(b.skipped) <= batch for b in batches)
        assert np.concatenate([b.indices for b in batches]).tolist() == kept
        np.testing.assert_array_equal(np.concatenate([b.inputs for b in batches]), inputs)
        assert np.concatenate([b.labels for b in batches]).tolist() == [int(folder.labels[i]) for i in kept]
        skipped = [s for b in batches for s in b.skipped]
        assert [s.path for s in skipped] == (["cat/0002.jpg"] if start <= 6 < end else [])
        assert all("cannot decode" in s.reason for s in skipped)
    assert [b.paths for b in named] == [b.paths for b in streamed]


def test_bad_ranges_and_streams_are_refused(data_dir: Path) -> None:
    store = DatasetStore(data_dir)
    with pytest.raises(InvalidArgument, match="outside"):
        store.source("cifar/small", 5, 99)
    with pytest.raises(InvalidArgument, match="batch_size"):
        store.source("cifar/small", batch_size=100000)
    image = ImageInput(encoded=store.folder("flat").files[0].read_bytes())
    gap = streamed_source(10, [], [(0, [image], []), (2, [image], [])], 0, 3, 1)
    with pytest.raises(InvalidArgument, match="expected is 1"):
        list(gap.batches(SHAPE))
    short = streamed_source(10, [], [(0, [image], [])], 0, 3)
    with pytest.raises(InvalidArgument, match="up to index 1"):
        list(short.batches(SHAPE))
    with pytest.raises(InvalidArgument, match="labels"):
        list(streamed_source(10, ["a"], [(0, [image], [3])], 0, 1).batches(SHAPE))
    with pytest.raises(NotFound, match="does not exist"):
        DatasetStore(data_dir / "missing")


def test_list_datasets_and_client_sources_over_grpc(data_dir: Path) -> None:
    server, port, _ = create_server("127.0.0.1:0", data_dir=data_dir)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            listed = {d.name: (d.size, list(d.classes)) for d in client.list_datasets()}
            assert listed == {"cifar/small": (12, ["bird", "cat", "dog"]), "flat": (1, ["one"])}
            named = client.dataset("cifar/small", 2, 7)
            assert named.folder is None and named.source.dataset == "cifar/small" and (named.start, named.stop) == (2, 7)
            local = client.dataset(data_dir / "cifar" / "small")
            assert local.size == 12 and local.classes == ["bird", "cat", "dog"]
            batches = list(local.batches(images_per_message=5))
            assert [b.start for b in batches] == [0, 5, 10] and sum(len(b.images) for b in batches) == 12
            with pytest.raises(NotFound, match="neither a local image folder"):
                client.dataset("nope")
    finally:
        server.stop(grace=None)


def test_both_sources_read_a_subset_of_indices_the_same(data_dir: Path) -> None:
    """A job's second pass reads only some images: the same batches from disk or from the client's stream."""
    store = DatasetStore(data_dir)
    folder = store.folder("cifar/small")
    wanted = [1, 5, 6, 7, 11]
    named = list(store.source("cifar/small", batch_size=2).take(wanted, SHAPE))
    runs = [(1, 2), (5, 8), (11, 12)]
    parts = [(a, [ImageInput(encoded=folder.files[i].read_bytes()) for i in range(a, b)], [int(folder.labels[i]) for i in range(a, b)]) for a, b in runs]
    streamed = list(streamed_source(len(folder), folder.classes, parts, batch_size=2).take(wanted, SHAPE))
    kept, inputs = reference(folder, 0, len(folder))
    expected = [i for i in wanted if i in kept]  # 6 is the corrupt cat/0002.jpg
    for batches in (named, streamed):
        assert [len(b.indices) + len(b.skipped) for b in batches] == [2, 2, 1]
        assert np.concatenate([b.indices for b in batches]).tolist() == expected
        np.testing.assert_array_equal(np.concatenate([b.inputs for b in batches]), inputs[[kept.index(i) for i in expected]])
        assert [s.index for b in batches for s in b.skipped] == [6]
    with pytest.raises(InvalidArgument, match="index 12 is outside"):
        list(store.source("cifar/small").take([3, 12], SHAPE))
    extra = [(5, [ImageInput(encoded=folder.files[5].read_bytes())] * 4, [])]
    with pytest.raises(InvalidArgument, match="image 8 is not asked for"):
        list(streamed_source(len(folder), folder.classes, [parts[0], *extra], batch_size=2).take(wanted, SHAPE))
    with pytest.raises(InvalidArgument, match="up to index 5"):
        list(streamed_source(len(folder), folder.classes, parts[:1], batch_size=2).take(wanted, SHAPE))


def test_data_set_images_are_held_to_the_servers_pixel_bound(data_dir: Path) -> None:
    """The bound an operator sets on request images holds in data-set jobs too, named or streamed:
    an image over it is skipped with the reason, its header read but no pixel decoded."""
    store = DatasetStore(data_dir)
    folder = store.folder("cifar/small")
    parts = [(i, [ImageInput(encoded=folder.files[i].read_bytes())], []) for i in range(4)]
    for source in (store.source("cifar/small", 0, 4, 2, max_pixels=1000), streamed_source(len(folder), folder.classes, parts, 0, 4, 2, max_pixels=1000)):
        batches = list(source.batches(SHAPE))
        assert sum(len(b.indices) for b in batches) == 0
        reasons = [s.reason for b in batches for s in b.skipped]
        assert len(reasons) == 4 and all("32x32 = 1,024 pixels; this server decodes at most 1,000" in r for r in reasons), reasons
    kept = list(store.source("cifar/small", 0, 4, 2, max_pixels=1024).batches(SHAPE))
    assert sum(len(b.indices) for b in kept) == 4


def test_a_batch_decodes_in_pieces_by_its_encoded_size() -> None:
    """Small images decode on one thread, large ones on up to DECODE_WORKERS, every image exactly once, in order."""
    from zfnet.server.datasets import DECODE_WORKERS, PIECE_BYTES, _pieces

    assert _pieces([1500] * 64) == [slice(0, 64)]
    for sizes in ([PIECE_BYTES] * 64, [3 * PIECE_BYTES // 2] * 2, [PIECE_BYTES // 2] * 5, [10 * PIECE_BYTES] * 3):
        pieces = _pieces(sizes)
        assert len(pieces) == min(DECODE_WORKERS, len(sizes), sum(sizes) // PIECE_BYTES)
        assert [i for piece in pieces for i in range(len(sizes))[piece]] == list(range(len(sizes)))
    assert _pieces([]) == [slice(0, 0)]


def test_decode_gate_bounds_bytes_decoded_at_once_and_refuses_an_image_over_it() -> None:
    import threading
    import time

    from zfnet.errors import ResourceExhausted
    from zfnet.server.images import DecodeGate

    gate = DecodeGate(100)
    peak, entered, refused, lock = [0], [], [], threading.Lock()

    def decode(k: int, nbytes: int) -> None:
        try:
            with gate.held(nbytes, f"image {k}"):
                with lock:
                    entered.append(k)
                    peak[0] = max(peak[0], gate.used)
                    assert gate.used <= 100, (gate.used, nbytes)
                time.sleep(0.002)
        except ResourceExhausted as err:
            refused.append((k, str(err)))

    sizes = [30, 60, 250, 40, 40, 40, 10, 90, 120, 5] * 3
    threads = []
    for k, n in enumerate(sizes):  # started one after another, so tickets follow k
        threads.append(threading.Thread(target=decode, args=(k, n)))
        threads[-1].start()
        time.sleep(0.0005)
    for t in threads:
        t.join()
    over = [k for k, n in enumerate(sizes) if n > 100]
    assert sorted(entered) == [k for k in range(len(sizes)) if k not in over] and gate.used == 0
    assert sorted(k for k, _ in refused) == over, "an image over the gate is refused whatever else runs"
    assert all("over the 100" in message for _, message in refused)
    assert peak[0] <= 100


def test_data_set_decoding_waits_at_the_gate_and_gives_the_same_batches(tmp_path: Path) -> None:
    """Large images of a data-set job decode on several threads, at most the gate's bytes at once;
    the batches are the same as without the gate."""
    from PIL import Image

    from zfnet.server.images import DecodeGate

    rng = np.random.default_rng(0)
    for k in range(8):
        (tmp_path / "big" / "noise").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(tmp_path / "big" / "noise" / f"{k}.jpg", quality=95)
    store = DatasetStore(tmp_path)
    cost = 600 * 600 * 15  # as images.inspect counts an RGB JPEG's decoding
    gate = DecodeGate(cost + cost // 2)  # room for one at a time
    held = gate.held
    most = [0]

    def counted(nbytes: int, what: str = ""):
        most[0] = max(most[0], gate.used + nbytes)
        return held(nbytes, what)

    gate.held = counted
    gated = list(store.source("big", 0, 8, 8, gate=gate).batches(SHAPE))
    free = list(store.source("big", 0, 8, 8).batches(SHAPE))
    assert most[0] > gate.limit, "the decoding tasks never overlapped: nothing was gated"
    assert gate.used == 0
    np.testing.assert_array_equal(gated[0].inputs, free[0].inputs)
