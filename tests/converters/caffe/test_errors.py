"""Bad input: one clear error each, naming the thing, and nothing written (API and CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from caffe_testing import deploy, write_weights
from typer.testing import CliRunner

from zfnet.client.cli import convert_caffe, mean
from zfnet.edge import edge
from zfnet.converters.caffe import convert, save
from zfnet.converters.caffe.registry import register
from zfnet.errors import InvalidArgument, NotFound, ZfnetError

NET = deploy((1, 3, 8, 8), """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 2 } }
""")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A good net, its weights in both formats, and an output path."""
    rng = np.random.default_rng(0)
    (tmp_path / "net.prototxt").write_text(NET)
    weights = write_weights(tmp_path, {"conv1": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)], "ip": [rng.normal(size=(2, 144)), rng.normal(size=2)]})
    return {"net": tmp_path / "net.prototxt", **weights, "out": tmp_path / "out" / "model.onnx", "dir": tmp_path}


def cli() -> typer.Typer:
    """A throwaway app with the commands under the project's error edge."""
    app = typer.Typer()
    app.command("caffe")(edge(convert_caffe.command))
    app.command("mean")(edge(mean.command))
    return app


def run_cli(*args: str | Path):
    result = CliRunner().invoke(cli(), [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_good_files_convert_through_the_cli(files):
    files["out"].parent.mkdir()
    result = run_cli("caffe", files["net"], files["h5"], "-o", files["out"], "--channel-order", "rgb", "--mean-value", "1,2,3", "--classes", "a,b")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {files['out']}: 3 layers, input data (Nx3x8x8) RGB 0..255; preprocessing: rgb order, mean 1,2,3, scale 1"
    assert [p.name for p in files["out"].parent.iterdir()] == ["model.onnx"]


def test_mean_command_writes_a_binaryproto(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "train" / "cat" / "a.png")
    result = run_cli("mean", "--data", tmp_path / "train", "-o", tmp_path / "mean.binaryproto", "--channel-order", "bgr")
    assert result.exit_code == 0, result.output
    assert "3x2x3 bgr mean, per channel 30.0, 20.0, 10.0" in result.output
    missing = run_cli("mean", "--data", tmp_path / "nowhere", "-o", tmp_path / "m2.binaryproto")
    assert missing.exit_code == 1 and "nowhere does not exist" in missing.output
    assert not (tmp_path / "m2.binaryproto").exists()


def break_truncated(f):
    data = f["caffemodel"].read_bytes()
    f["caffemodel"].write_bytes(data[: len(data) // 2])
    return f["caffemodel"], {}, (InvalidArgument, r"net\.caffemodel is not a readable \.caffemodel .*truncated")


def break_syntax(f):
    f["net"].write_text(NET.replace("kernel_size: 3", "kernel_size: 3 stride 2", 1))
    return f["h5"], {}, (InvalidArgument, r'net\.prototxt:4:\d+: .*Expected ":"')


def break_shapes(f):
    f["net"].write_text(NET.replace("num_output: 4", "num_output: 5"))
    return f["caffemodel"], {}, (InvalidArgument, r"layer 'conv1' \(Convolution\): blob 0 has shape \(4, 3, 3, 3\) in the weights, the net needs \(5, 3, 3, 3\)")


def break_missing_blob(f):
    f["net"].write_text(NET.replace('"ip" type', '"ip2" type'))
    return f["h5"], {}, (InvalidArgument, r"layer 'ip2' \(InnerProduct\): the weights have no blob 0 \(the net needs shape \(2, 144\)\)")


def break_extra_blob(f):
    f["net"].write_text(NET.replace("num_output: 4", "num_output: 4 bias_term: false"))
    return f["caffemodel"], {}, (InvalidArgument, r"layer 'conv1' \(Convolution\): the weights have 2 blobs, the net uses 1")


def break_layer_type(f):
    f["net"].write_text(NET + 'layer { name: "crop" type: "Crop" bottom: "ip" bottom: "data" top: "crop" }\n')
    return f["h5"], {}, (InvalidArgument, r"layer 'crop' has type 'Crop', which zfnet cannot convert; supported: .*Convolution")


def break_mean_file(f):
    (f["dir"] / "mean.binaryproto").write_bytes(b"\xff\xff\xff not a blob")
    return f["h5"], {"mean_file": f["dir"] / "mean.binaryproto"}, (InvalidArgument, r"mean file .*mean\.binaryproto is not a Caffe BlobProto")


def break_missing_mean_file(f):
    f["net"].write_text(NET.replace('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }',
        'layer { name: "d" type: "Data" top: "data" top: "label" transform_param { mean_file: "/mnt/gone/mean.binaryproto" } }'))  # fmt: skip
    return f["h5"], {}, (InvalidArgument, r"data layer 'd' uses mean_file /mnt/gone/mean\.binaryproto, which does not exist on this machine; pass --mean-file")


def break_input_size(f):
    f["net"].write_text(NET.replace('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }',
        'layer { name: "d" type: "Data" top: "data" top: "label" }'))  # fmt: skip
    return f["h5"], {}, (InvalidArgument, r"data layer 'd' \(Data\) does not give the image size .*pass --input-size H,W")


def break_weights_path(f):
    return f["dir"] / "missing.caffemodel", {}, (NotFound, r"weights file .*missing\.caffemodel does not exist")


CASES = [break_truncated, break_syntax, break_shapes, break_missing_blob, break_extra_blob, break_layer_type, break_mean_file, break_missing_mean_file, break_input_size, break_weights_path]


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_one_clear_error_and_nothing_written(files, breaker):
    weights, options, (kind, message) = breaker(files)
    with pytest.raises(kind, match=message):
        convert(files["net"], weights, **options)
    files["out"].parent.mkdir()
    flags = [item for key, value in options.items() for item in (f"--{key.replace('_', '-')}", value)]
    result = run_cli("caffe", files["net"], weights, "-o", files["out"], *flags)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert list(files["out"].parent.iterdir()) == []


def test_save_is_atomic(files, monkeypatch):
    model = convert(files["net"], files["caffemodel"])
    save(model, files["dir"] / "new" / "folder" / "m.onnx")
    assert [p.name for p in (files["dir"] / "new" / "folder").iterdir()] == ["m.onnx"]
    files["out"].parent.mkdir()
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(InvalidArgument, match="No space left"):
        save(model, files["out"])
    assert list(files["out"].parent.iterdir()) == []


def test_errors_are_zfnet_errors_with_the_file_name(files):
    files["net"].write_text("layer {")
    with pytest.raises(ZfnetError, match=r'net\.prototxt:1:7: Expected "}"'):
        convert(files["net"], files["h5"])


def test_registry_refuses_a_second_converter_for_a_type():
    with pytest.raises(ValueError, match="'ReLU' already has a converter"):
        register("ReLU")(lambda *args: [])
