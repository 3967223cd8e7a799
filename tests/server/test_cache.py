"""The on-disk cache of prepared models: a model prepared once (expose pass, shape inference,
projection graphs) is read back by later loads instead of being prepared again, under
``$XDG_CACHE_HOME/zfnet`` (a temporary folder in the tests), and a cache that cannot be used is no error.
Issue 18 (defect 5): the cache is private (0700 / 0600), bounded (``ZFNET_CACHE_MAX``, least recently
used first), every entry verified before use (its SHA-256, no external data), and a standalone
server's cache is a temporary directory of its own, emptied by DeleteModel and removed at exit."""

from __future__ import annotations

import hashlib
import inspect
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest

import hostile
from zfnet.converters import expose, graph, index
from zfnet.errors import InvalidArgument
from zfnet.server import cache, engine, models, projection, rules
from zfnet.server.engine import Engine
from zfnet.server.images import ImageInput
from zfnet.server.models import ModelStore, load


def _deconv(model, sample_images) -> list:
    images = [ImageInput(encoded=p.read_bytes()) for p in sample_images[:2]]
    return Engine(ModelStore()).deconv(model, images, 4, None, 3, "max", "guided")[1]


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "zfnet"


def test_a_prepared_model_is_read_back_not_prepared_again(fresh_cache: Path, reference_onnx: Path, sample_images, monkeypatch) -> None:
    data = reference_onnx.read_bytes()
    first = load(data, "reference")
    before = _deconv(first, sample_images)
    folder = fresh_cache / cache.fingerprint() / first.sha256
    assert (folder / "exposed.onnx").is_file() and len(list(folder.glob("projection-guided-*.onnx"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("prepared again instead of read from the cache")

    monkeypatch.setattr(expose, "expose_indexed", fail)
    monkeypatch.setattr(projection, "build", fail)
    second = load(data, "reference")
    assert second.layers == first.layers
    after = _deconv(second, sample_images)
    for a, b in zip(before, after, strict=True):
        assert (a.channel, a.location, a.receptive_field) == (b.channel, b.location, b.receptive_field)
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_the_cache_follows_xdg_cache_home(fresh_cache: Path, monkeypatch) -> None:
    assert cache.root() == fresh_cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.root() == Path.home() / ".cache" / "zfnet"


def test_an_unusable_cache_is_no_error(tmp_path: Path, reference_onnx: Path, sample_images, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert _deconv(load(reference_onnx.read_bytes(), "reference"), sample_images)


def test_a_damaged_entry_is_prepared_again(fresh_cache: Path, reference_onnx: Path) -> None:
    model = load(reference_onnx.read_bytes(), "reference")
    (fresh_cache / cache.fingerprint() / model.sha256 / "exposed.onnx").write_bytes(b"not a model")
    assert load(reference_onnx.read_bytes(), "reference").layers == model.layers


def test_the_cache_key_covers_the_code_that_prepares_models_and_nothing_else() -> None:
    """Derived from the imports of the expose pass and the projection builder: the graph index, every
    module of the op registry (the rules and the window geometry), not the engine that uses them."""
    files = set(cache.sources())
    assert set(Path(inspect.getfile(rules)).parent.glob("*.py")) <= files
    assert {Path(inspect.getfile(m)) for m in (expose, graph, index, projection)} <= files
    assert not {Path(inspect.getfile(m)) for m in (engine, models, cache)} & files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _entry(folder: Path, sha256: str) -> Path:
    return folder / cache.fingerprint() / sha256 / "exposed.onnx"


def test_the_cache_is_private_and_a_wider_folder_is_narrowed(fresh_cache: Path, reference_onnx: Path, sample_images) -> None:
    fresh_cache.mkdir(parents=True, mode=0o755)
    fresh_cache.chmod(0o755)  # as an older version left it
    _deconv(load(reference_onnx.read_bytes(), "reference"), sample_images)
    folders = [fresh_cache, *(p for p in fresh_cache.rglob("*") if p.is_dir())]
    files = [p for p in fresh_cache.rglob("*") if p.is_file()]
    assert len(folders) == 3 and {_mode(p) for p in folders} == {0o700}
    assert len(files) == 4 and {_mode(p) for p in files} == {0o600}, "exposed model, projection, and their digests"


def test_an_edited_entry_is_rebuilt_never_served(fresh_cache: Path, reference_onnx: Path, sample_images) -> None:
    data = reference_onnx.read_bytes()
    first = load(data, "reference")
    reference = _deconv(first, sample_images)
    entry = _entry(fresh_cache, first.sha256)
    other = load(hostile.conv_model().SerializeToString(), "other")  # a valid exposed model, put in the reference's place
    entry.write_bytes(_entry(fresh_cache, other.sha256).read_bytes())
    second = load(data, "reference")
    assert second.layers == first.layers, "the edited entry was served"
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == entry.with_name("exposed.onnx.sha256").read_text(), "rebuilt and stored again"
    for a, b in zip(reference, _deconv(second, sample_images), strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_an_entry_naming_an_external_file_is_refused_even_with_a_matching_digest(fresh_cache: Path, reference_onnx: Path, tmp_path: Path) -> None:
    data = reference_onnx.read_bytes()
    first = load(data, "reference")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-BYTES-0123456789")
    crafted = hostile.file_reading_model(str(secret))
    crafted.metadata_props.add(key=expose.EXPOSED_KEY, value="1")
    forged = crafted.SerializeToString()
    entry = _entry(fresh_cache, first.sha256)
    entry.write_bytes(forged)
    entry.with_name("exposed.onnx.sha256").write_text(hashlib.sha256(forged).hexdigest())
    second = load(data, "reference")
    assert second.layers == first.layers and "leak" not in {row.name for row in second.layers}
    assert onnx.ModelProto.FromString(entry.read_bytes()).graph.name == first.model.graph.name, "the crafted entry was replaced"


def test_the_size_bound_removes_the_least_recently_used_entries(fresh_cache: Path, reference_onnx: Path, monkeypatch) -> None:
    data = reference_onnx.read_bytes()
    reference = load(data, "reference")
    one = sum(p.stat().st_size for p in fresh_cache.rglob("*") if p.is_file())
    bound = one + (64 << 10)  # the reference model's entry and a few small ones
    monkeypatch.setenv(cache.MAX_ENV, str(bound))
    assert cache.max_bytes() == bound
    small = [load(hostile.conv_model(seed=seed).SerializeToString(), f"small{seed}") for seed in range(3)]
    os.utime(_entry(fresh_cache, reference.sha256), (1, 1))  # used longest ago
    variant = onnx.ModelProto.FromString(data)
    variant.metadata_props.add(key="test.variant", value="1")  # another model of the same size
    another = load(variant.SerializeToString(), "variant")
    total = sum(p.stat().st_size for p in fresh_cache.rglob("*") if p.is_file())
    kept = {p.parent.name for p in fresh_cache.rglob("exposed.onnx")}
    assert total <= bound, (total, bound)
    assert kept == {another.sha256, *(m.sha256 for m in small)}, "the least recently used entry went, and only it"


def test_a_standalone_servers_cache_is_its_own_emptied_on_delete_and_removed_at_close(fresh_cache: Path, reference_onnx: Path) -> None:
    private = cache.Cache.private()
    assert private.folder != fresh_cache and _mode(private.folder) == 0o700
    store = ModelStore(cache=private)
    model = store.add(reference_onnx.read_bytes(), "reference")
    assert _entry(private.folder, model.sha256).is_file() and not fresh_cache.exists(), "nothing in the user's cache"
    store.delete(model.sha256)
    assert not _entry(private.folder, model.sha256).parent.exists()
    private.close()
    assert not private.folder.exists()


def test_bytes_naming_external_data_are_checked_even_when_the_cache_holds_their_model(fresh_cache: Path, reference_onnx: Path, tmp_path: Path) -> None:
    """A cached model is read back without parsing its upload again, unless the bytes may name files:
    the same bytes that a --model-dir model reads its weights with are refused as an upload."""
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(onnx.load(reference_onnx), folder / "split.onnx", save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    data = (folder / "split.onnx").read_bytes()
    from_dir = load(data, "split", base_dir=folder)
    assert (_entry(fresh_cache, from_dir.sha256)).is_file()
    with pytest.raises(InvalidArgument, match="external data"):
        load(data, "split")
    plain = reference_onnx.read_bytes()
    first = load(plain, "reference")
    again = load(plain, "reference")  # read back: the upload is not parsed
    assert again.layers == first.layers


@pytest.mark.parametrize("digest", ["kept", "matching"])
def test_a_truncated_entry_is_removed_and_rebuilt(fresh_cache: Path, reference_onnx: Path, digest: str, caplog) -> None:
    """Cut inside a large initializer's bytes: its digest no longer matches, or (a digest written to
    match) its graph's length runs past the end of the file."""
    data = reference_onnx.read_bytes()
    first = load(data, "reference")
    entry = _entry(fresh_cache, first.sha256)
    whole = entry.read_bytes()
    cut = whole[: len(whole) // 2]
    entry.write_bytes(cut)
    if digest == "matching":
        entry.with_name("exposed.onnx.sha256").write_text(hashlib.sha256(cut).hexdigest())
    second = load(data, "reference")
    problem = "do not match their SHA-256" if digest == "kept" else "runs past its message"
    assert any(problem in r.getMessage() and "is removed" in r.getMessage() for r in caplog.records), problem
    assert second.layers == first.layers and second.weights is not None
    assert entry.read_bytes() == whole, "rebuilt: the same bytes"
    assert hashlib.sha256(whole).hexdigest() == entry.with_name("exposed.onnx.sha256").read_text()


def _no_cache_written(folder: Path, reference_onnx: Path, sample_images) -> None:
    model = load(reference_onnx.read_bytes(), "reference")
    assert model.weights is None, "the model holds its weights"
    assert _deconv(model, sample_images)
    assert not [p for p in folder.rglob("*") if p.is_file()], "no entry, digest or temporary file left"


def test_a_full_disk_is_no_error_and_leaves_no_partial_entry(fresh_cache: Path, reference_onnx: Path, sample_images) -> None:
    """Files may not grow past 64 KiB (as a full disk): every entry fails part-way through its write."""
    import resource
    import signal

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, limits[1]))
    try:
        _no_cache_written(fresh_cache, reference_onnx, sample_images)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_cache_folder_is_no_error(fresh_cache: Path, reference_onnx: Path, sample_images) -> None:
    fresh_cache.mkdir(parents=True, mode=0o500)
    try:
        _no_cache_written(fresh_cache, reference_onnx, sample_images)
    finally:
        fresh_cache.chmod(0o700)
