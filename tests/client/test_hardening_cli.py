"""Issue 6, defect 6 (clients) and the CLI side of defects 2 and 7: a long-lived ``Client`` uploads
again after the server lost its model; ``zfclient deconv`` splits long image lists into several
requests, takes folders, never writes one image's pictures over another's, and reports exactly
what it wrote; TLS and tokens from the command line; one-line errors for non-ASCII digits."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cli_testing import invoke, ok

from zfnet.client import transport
from zfnet.client.api import Client
from zfnet.client.transport import TOKEN_ENV, Connection
from zfnet.client.cli.deconv import output_names
from zfnet.errors import NotFound, ResourceExhausted
from zfnet.server import deconv as deconv_module
from zfnet.server.app import create_server
from zfnet.server.security import Tls
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2 as pb
from zfnet.v1 import zfnet_pb2_grpc
from zfnet.wire.common import layer_proto

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "zfnet-cifar10.onnx"
TIMEOUT = 60


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), f"{result.exit_code}: {result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


# ---- the Python client uploads again -----------------------------------------------------------


def count_uploads(engine, monkeypatch) -> list[str]:
    names: list[str] = []
    real = engine.store.receive
    monkeypatch.setattr(engine.store, "receive", lambda chunks, name, size, sha256="": names.append(name) or real(chunks, name, size, sha256))
    return names


def test_client_uploads_again_after_a_server_restart(sample_images, monkeypatch) -> None:
    first, port, _ = create_server("127.0.0.1:0")
    target = f"127.0.0.1:{port}"
    client = Client(target)
    try:
        before = client.probabilities(MODEL, sample_images[:2])
        first.stop(grace=None).wait()
        second, _, engine = create_server(target)  # the same address, a fresh server: it holds nothing
        try:
            uploads = count_uploads(engine, monkeypatch)
            with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:  # what a client without it got: NOT_FOUND forever
                with pytest.raises(grpc.RpcError) as info:
                    zfnet_pb2_grpc.ZfnetStub(channel).Predict(pb.PredictRequest(model=pb.ModelRef(sha256=hashlib.sha256(MODEL.read_bytes()).hexdigest())), timeout=TIMEOUT)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
            after = client.probabilities(MODEL, sample_images[:2])
            np.testing.assert_allclose(after, before, atol=1e-6)
            assert uploads == [MODEL.stem]
            client.probabilities(MODEL, sample_images[:1])
            assert uploads == [MODEL.stem], "uploaded more than once"
        finally:
            second.stop(grace=None)
    finally:
        client.close()


@pytest.mark.fresh_server  # deletes the model and counts uploads
def test_client_uploads_again_after_delete_and_only_then(server, sample_images, monkeypatch) -> None:
    target, engine = server
    uploads = count_uploads(engine, monkeypatch)
    with Client(target) as owner, Client(target) as other:
        owner.predict(MODEL, sample_images[:1])
        assert other.delete_model(MODEL).removed
        info = owner.model_info(MODEL)  # GetModelInfo and every analysis take the same path
        assert info.sha256 == hashlib.sha256(MODEL.read_bytes()).hexdigest()
        result = owner.deconv(MODEL, sample_images[:1], 1, top_k=2)
        assert len(result.reconstructions) == 2
        assert uploads == [MODEL.stem, MODEL.stem]
        with pytest.raises(NotFound, match="conv99"):  # a NOT_FOUND about something else uploads nothing
            owner.deconv(MODEL, sample_images[:1], "conv99")
        assert uploads == [MODEL.stem, MODEL.stem]
        with pytest.raises(NotFound, match="upload it"):  # a model this client never uploaded: nothing to upload
            other._call(other.stub.GetModelInfo, pb.ModelRef(sha256="0" * 64))
        assert uploads == [MODEL.stem, MODEL.stem]


# ---- zfclient deconv: batches, folders, distinct outputs, exact report -----------------------


def image_tree(root: Path, sample_images) -> list[Path]:
    """Images as users have them: same stems in different folders, cat.jpg beside cat.png, a
    non-image file, nested folders."""
    layout = ["a/x/cat.jpg", "b/x/cat.jpg", "c/cat.jpg", "c/cat.png", "c/deep/er/dog.jpg", "d/ship.jpg", "d/ship2.jpeg"]
    made = []
    for k, rel in enumerate(layout):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_images[k], path)
        made.append(path)
    (root / "c" / "notes.txt").write_text("not an image\n")
    return made


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def reported_count(stdout: str) -> int:
    return int(re.findall(r"wrote (\d+) files", stdout)[0])


def test_output_names_are_distinct(tmp_path: Path, sample_images) -> None:
    paths = image_tree(tmp_path, sample_images)
    names = output_names([*paths, tmp_path / "c" / "cat.jpg", tmp_path / "a_x_cat.jpg"])
    assert len(set(names)) == len(names)
    assert names == ["a_x_cat", "b_x_cat", "c_cat_jpg", "c_cat_png", "dog", "ship", "ship2", "c_cat_jpg-2", "a_x_cat-2"]


@pytest.mark.slow
def test_deconv_splits_requests_takes_folders_and_reports_what_it_wrote(tmp_path: Path, sample_images, monkeypatch) -> None:
    images = image_tree(tmp_path / "in", sample_images)
    monkeypatch.setattr(deconv_module, "MAX_ROWS", 8)  # the in-process server takes 8 reconstructions per request
    with Client() as client:  # the defect: one request for all the images
        with pytest.raises(ResourceExhausted, match="at most 8"):
            client.deconv(MODEL, images, 1, top_k=2)
    out = tmp_path / "out"
    result = invoke("deconv", "--model", MODEL, "--layer", "1", "--top", "2", "--raw", "--batch-size", "3",
                    "--image", tmp_path / "in" / "a", "--image", tmp_path / "in" / "b", "--image", tmp_path / "in" / "c",
                    "--image", tmp_path / "in" / "d", "--image", images[-1], "--out", out)
    ok(result)
    written = files_under(out)
    assert reported_count(result.stdout) == len(written) == 7 * (2 * 2 + 1), result.stdout  # 2 PNGs + 2 .npy + 1 grid each
    assert "14 reconstructions" in result.stdout and "of 7 image(s)" in result.stdout
    assert "7 grid(s)" in result.stdout and "14 reconstruction PNGs, 14 .npy" in result.stdout
    for name in output_names(images):
        assert (out / f"{name}_conv1_deconvnet_grid.png").is_file() or list(out.glob(f"{name}_*_grid.png")), name
        assert len(list((out / name).glob("*.png"))) == 2 and len(list((out / name).glob("*.npy"))) == 2
    arrays = [np.load(p) for p in sorted(out.glob("*_cat*/*.npy"))]
    assert len(arrays) == 8 and not np.array_equal(arrays[0], arrays[2]), "two images' outputs are the same file"


def test_deconv_folder_without_images_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    one_line_error(invoke("deconv", "--model", MODEL, "--layer", "1", "--image", tmp_path / "empty", "--out", tmp_path / "o"), "holds no images")


# ---- one-line errors for what used to crash -----------------------------------------------------


@pytest.mark.parametrize("layer", ["²", "٣", "３"])
def test_non_ascii_digit_layers_are_one_line_errors(tmp_path: Path, sample_images, layer: str) -> None:
    one_line_error(invoke("deconv", "--model", MODEL, "--layer", layer, "--image", sample_images[0], "--out", tmp_path / "o"), repr(layer))
    assert not (tmp_path / "o").exists()


def test_non_ascii_digit_channels_are_one_line_errors(tmp_path: Path, sample_images) -> None:
    one_line_error(invoke("deconv", "--model", MODEL, "--layer", "1", "--channels", "٣", "--image", sample_images[0], "--out", tmp_path / "o"), "--channels")


def test_layer_ref_takes_only_ascii_digits_as_numbers() -> None:
    assert layer_proto("3") == pb.LayerRef(number=3)
    assert layer_proto(3) == pb.LayerRef(number=3)
    assert layer_proto("٣") == pb.LayerRef(name="٣")


# ---- TLS and tokens from the command line -------------------------------------------------------


@pytest.fixture()
def secured(pki) -> Iterator[str]:
    srv, port, _ = create_server("127.0.0.1:0", tls=Tls(pki.server_cert, pki.server_key), tokens=("cli-token-123",))
    yield f"127.0.0.1:{port}"
    srv.stop(grace=None)


def test_cli_token_and_tls_options(secured: str, pki, monkeypatch) -> None:
    ok(invoke("--token", "cli-token-123", "--tls-ca", pki.ca, "layers", "--model", MODEL, "--server", secured))
    one_line_error(invoke("--token", "wrong", "--tls-ca", pki.ca, "layers", "--model", MODEL, "--server", secured), "not valid")
    one_line_error(invoke("--tls-ca", pki.ca, "layers", "--model", MODEL, "--server", secured), "ZFNET_TOKEN")
    one_line_error(invoke("--token", "cli-token-123", "layers", "--model", MODEL, "--server", secured), "cannot reach")
    monkeypatch.setenv(TOKEN_ENV, "cli-token-123")
    monkeypatch.setenv(transport.TLS_CA_ENV, str(pki.ca))
    result = invoke("layers", "--model", MODEL, "--server", secured)
    ok(result)
    assert "conv1" in result.stdout
    with Client(secured) as client:  # the Python client reads the same environment
        assert client.connection == Connection(token="cli-token-123", tls_ca=pki.ca)
        assert client.model_info(MODEL).name == MODEL.stem
