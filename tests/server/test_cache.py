"""The on-disk cache of prepared models: a model prepared once (expose pass, shape inference,
projection graphs) is read back by later loads instead of being prepared again, under
``$XDG_CACHE_HOME/zfnet`` (a temporary folder in the tests), and a cache that cannot be used is no error."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from zfnet.converters import expose, graph, index
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
