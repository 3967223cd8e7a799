"""The ``zfclient`` command line: Typer's CliRunner in-process, and one run of the installed script.

Without ``--server`` each command starts the service in-process, so most tests need nothing else;
results are compared with the Python client, never with weight-dependent values.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_testing import invoke, ok
from PIL import Image

from zfnet.client.api import Client
from zfnet.client.transport import SERVER_ENV

ROOT = Path(__file__).resolve().parents[2]
MODEL = "models/zfnet-cifar10.onnx"
CHECKPOINT = "models/zfnet-cifar10.pt"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def channels_in(folder: Path, suffix: str = ".png") -> list[int]:
    return sorted(int(re.findall(r"_ch(\d+)_", p.name)[0]) for p in folder.glob(f"*{suffix}"))


def grid_paths(stdout: str) -> list[Path]:
    return [Path(line.strip()) for line in stdout.splitlines() if line.strip().endswith("_grid.png")]


def table_rows(stdout: str) -> list[list[str]]:
    """Cells of a rich table's body rows."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in stdout.splitlines() if line.strip().startswith("│")]


# ---- deconv ------------------------------------------------------------------------------


def test_deconv_writes_pngs_grids_and_raw_arrays(tmp_path: Path, sample_images, server) -> None:
    a, b = sample_images[0], sample_images[1]  # airplane/0000.jpg and automobile/0000.jpg: same stem
    out = tmp_path / "out"
    result = invoke("deconv", "--model", MODEL, "--layer", "4", "--image", a, "--image", b, "--top", "4", "--out", out, "--raw")
    ok(result)
    grids = grid_paths(result.stdout)
    assert len(grids) == 2
    assert sorted(grids) == sorted(out.glob("*_grid.png"))
    for grid in grids:
        with Image.open(grid) as img:
            assert img.width > 0 and img.height > 0 and img.mode in ("RGB", "RGBA")
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [f.name for f in folders] == [f"{a.parent.name}_{a.stem}", f"{b.parent.name}_{b.stem}"], "same stems must not collide"
    target, _ = server
    with Client(target) as client:
        expected = client.deconv(MODEL, [a, b], 4, top_k=4)
    assert "relu4" in result.stdout and expected.layer == "relu4"
    for index, folder in enumerate(folders):
        pngs = sorted(folder.glob("*.png"))
        assert len(pngs) == 4
        for png in pngs:
            with Image.open(png) as img:
                assert img.width > 0 and img.height > 0
        ours = [r for r in expected.reconstructions if r.image == index]
        assert channels_in(folder) == channels_in(folder, ".npy") == sorted(r.channel for r in ours)
        for r in ours:
            (npy,) = folder.glob(f"*_ch{r.channel:04d}_*.npy")
            array = np.load(npy)
            assert array.shape == (3, 32, 32)
            np.testing.assert_allclose(array, r.pixels, atol=1e-6, rtol=1e-5)


def test_deconv_explicit_channels(tmp_path: Path, sample_images) -> None:
    out = tmp_path / "out"
    ok(invoke("deconv", "--model", MODEL, "--layer", "2", "--image", sample_images[3], "--channels", "3,17", "--out", out))
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert channels_in(folder) == [3, 17]
    assert len(list(out.glob("*_grid.png"))) == 1


def test_deconv_guided_map(tmp_path: Path, sample_images) -> None:
    out = tmp_path / "out"
    result = invoke("deconv", "--model", MODEL, "--layer", "conv3", "--image", sample_images[2], "--top", "2", "--method", "guided", "--mode", "map", "--out", out, "--raw")
    ok(result)
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    names = sorted(p.name for p in folder.glob("*.png"))
    assert len(names) == 2 and all(n.startswith("conv3_") and n.endswith("_guided_map.png") for n in names)
    assert all(np.load(p).shape == (3, 32, 32) for p in folder.glob("*.npy"))
    assert "guided" in result.stdout and "map" in result.stdout


@pytest.mark.fresh_server  # asserts the server held nothing before
def test_deconv_against_server_option(tmp_path: Path, sample_images, server) -> None:
    target, engine = server
    assert engine.store.summaries() == []
    ok(invoke("deconv", "--model", MODEL, "--layer", "1", "--image", sample_images[0], "--top", "2", "--out", tmp_path / "o", "--server", target))
    assert [name for _, name, _ in engine.store.summaries()] == ["zfnet-cifar10"], "the model went to the given server"
    assert len(list((tmp_path / "o").glob("*/*.png"))) == 2


@pytest.mark.fresh_server  # the upload shows which server the CLI used
def test_server_from_environment(server, sample_images) -> None:
    target, engine = server
    result = invoke("predict", "--model", MODEL, "--image", sample_images[0], env={SERVER_ENV: target})
    ok(result)
    assert [name for _, name, _ in engine.store.summaries()] == ["zfnet-cifar10"], f"${SERVER_ENV} was not used"


# ---- layers, predict, convert ------------------------------------------------------------


def test_layers_prints_the_table_with_layer_numbers() -> None:
    result = invoke("layers", "--model", MODEL)
    ok(result)
    rows = table_rows(result.stdout)
    by_name = {row[1]: row for row in rows}
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        assert name in by_name, f"{name} missing from\n{result.stdout}"
    numbers = [int(row[5]) for row in rows if row[5]]
    assert numbers == list(range(1, 9))
    assert by_name["fc8"][5] == "8" and by_name["fc8"][3] == "(N, 10)" and by_name["conv1"][4] == "axis 1"
    assert "pool1.switches" not in result.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecation notices
def test_layers_shows_the_names_a_model_was_saved_with(tmp_path: Path, sample_images) -> None:
    """A model saved by ``torch.onnx.export(..., output_names=["logits"])``: its layers are named after
    their modules, the saved names are listed beside them and ``--layer logits`` selects the output."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10)).eval()
    path = tmp_path / "saved.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(path), output_names=["logits"])
    result = invoke("layers", "--model", path)
    ok(result)
    by_name = {row[1]: row for row in table_rows(result.stdout)}
    assert by_name["3"][6] == "logits" and by_name["1"][2] == "Relu"
    out = tmp_path / "out"
    ok(invoke("deconv", "--model", path, "--layer", "logits", "--image", sample_images[0], "--top", "2", "--out", out))
    assert len(list(out.glob("*_grid.png"))) == 1
    result = invoke("deconv", "--model", path, "--layer", "logit", "--image", sample_images[0])
    assert result.exit_code == 1 and "did you mean logits?" in result.stderr


def test_commands_that_talk_to_a_server_load_no_model_code(server) -> None:
    """``zfclient layers --server`` imports neither onnxruntime nor onnx nor the op registry."""
    script = (
        "import sys; from typer.testing import CliRunner; from zfnet.client.cli.main import app; "
        f"r = CliRunner().invoke(app, ['layers', '--model', {str(MODEL)!r}, '--server', {server[0]!r}]); "
        "assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'zfnet.server.rules', 'matplotlib', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_predict_prints_class_names(sample_images, server) -> None:
    images = sample_images[:3]
    result = invoke("predict", "--model", MODEL, *[x for p in images for x in ("--image", p)], "--top", "2")
    ok(result)
    rows = table_rows(result.stdout)
    assert len(rows) == 6
    assert all(row[1] in CIFAR10 for row in rows)
    assert [row[0] for row in rows] == [images[0].name, "", images[1].name, "", images[2].name, ""]
    target, _ = server
    with Client(target) as client:
        reply = client.predict(MODEL, images, top_k=2)
    assert [row[1] for row in rows] == [s.label for p in reply.predictions for s in p.top]
    assert [float(row[2]) for row in rows] == pytest.approx([s.probability for p in reply.predictions for s in p.top], abs=6e-4)


@pytest.mark.slow
def test_convert_torch_writes_an_exposed_model(tmp_path: Path, sample_images, reference_module) -> None:
    output = tmp_path / "x.onnx"
    result = invoke("convert", "torch", "zfnet-cifar10", "--weights", CHECKPOINT, "-o", output)
    ok(result)
    assert str(output) in result.stdout
    outputs = [o.name for o in onnx.load(output).graph.output]
    for name in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8", "pool1.switches", "pool2.switches", "pool5.switches"]:
        assert name in outputs
    assert not list(tmp_path.glob("*.tmp"))
    batch = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) for p in sample_images[:4]])
    logits = np.asarray(ort.InferenceSession(str(output), providers=["CPUExecutionProvider"]).run(["fc8"], {"image": batch})[0])
    with torch.no_grad():
        expected = reference_module(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.fresh_server  # the upload shows which server the script used
def test_installed_console_script(server) -> None:
    script = Path(sys.executable).parent / "zfclient"
    assert script.is_file(), f"{script} missing: is the package installed (pip install -e .)?"
    target, engine = server
    env = {k: v for k, v in os.environ.items() if k != SERVER_ENV}
    done = subprocess.run([str(script), "layers", "--model", MODEL, "--server", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "conv1" in done.stdout and "fc8" in done.stdout
    assert engine.store.summaries(), "the script did not talk to the given server"


# ---- errors: one line on stderr, exit code 1, no traceback -------------------------------


def garbage_jpg(tmp_path: Path) -> Path:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 10)
    return path


def text_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    path.write_text("not a state dict\n")
    return path


CASES = {
    "missing_model": (lambda t, img: ["layers", "--model", t / "nope.onnx"], ["nope.onnx", "does not exist"]),
    "missing_image": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "1", "--image", t / "nope.jpg", "--out", t / "o"], ["nope.jpg", "does not exist"]),
    "unreadable_image": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "1", "--image", garbage_jpg(t), "--out", t / "o"], ["broken.jpg", "decode"]),
    "unreadable_image_predict": (lambda t, img: ["predict", "--model", MODEL, "--image", garbage_jpg(t)], ["broken.jpg"]),
    "layer_out_of_range": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "99", "--image", img, "--out", t / "o"], ["99", "1..8"]),
    "unknown_layer_name": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "conv77", "--image", img, "--out", t / "o"], ["conv77"]),
    "channel_out_of_range": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "1", "--channels", "3,500", "--image", img, "--out", t / "o"], ["500", "out of range"]),
    "channels_not_numbers": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "1", "--channels", "a,b", "--image", img, "--out", t / "o"], ["--channels", "a,b"]),
    "bad_method": (lambda t, img: ["deconv", "--model", MODEL, "--layer", "1", "--method", "magic", "--image", img, "--out", t / "o"], ["magic"]),
    "server_unreachable": (lambda t, img: ["predict", "--model", MODEL, "--image", img, "--server", "127.0.0.1:1"], ["cannot reach", "127.0.0.1:1"]),
    "bad_checkpoint": (lambda t, img: ["convert", "torch", "zfnet-cifar10", "--weights", text_checkpoint(t), "-o", t / "x.onnx"], ["weights.pt", "cannot load"]),
    "missing_checkpoint": (lambda t, img: ["convert", "torch", "zfnet-cifar10", "--weights", t / "none.pt", "-o", t / "x.onnx"], ["none.pt", "does not exist"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_errors_are_one_line(case: str, tmp_path: Path, sample_images, monkeypatch) -> None:
    make_args, words = CASES[case]
    passes = []  # forward passes of the in-process server (counted, not timed: an error comes before the work)
    for method in ("run", "run_with_iobinding"):
        real = getattr(ort.InferenceSession, method)
        monkeypatch.setattr(ort.InferenceSession, method, lambda self, *a, _real=real, **k: passes.append(1) or _real(self, *a, **k))
    result = invoke(*make_args(tmp_path, sample_images[0]))
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.output
    assert not list((tmp_path / "x.onnx").parent.glob("x.onnx*")), "a failed convert left a file behind"
    assert len(passes) <= 1, f"{case} ran {len(passes)} forward passes before failing"
