"""The package as a user installs it: ``python -m build`` (an sdist, then the wheel built from that
sdist) installed into fresh virtual environments, the client alone and with the ``server`` extra, and
``pip install`` of a plain copy of the tree without ``.git``.

Real installs from the package registry (pip's cache makes later runs quick); the tests skip, saying
why, where the registry cannot be reached. Predictions are checked against bare onnxruntime run here."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomllib
from PIL import Image

from zfnet import extras

ROOT = Path(__file__).resolve().parents[1]
MODEL = "models/zfnet-cifar10.onnx"
IMAGE = "samples/cifar10/cat/0000.jpg"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODEL_CODE = {"torch", "onnxruntime", "onnxruntime-gpu", "scikit-learn", "scipy", "onnx"}  # none of it in a client-only install
NOT_IN_A_COPY = shutil.ignore_patterns(
    ".git", ".venv", "out", "build", "dist", "node_modules", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis",
    "*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi",  # generated at build time
)
INSTALL_S = 1800  # a first install downloads onnxruntime; pip's cache serves the next


def environment() -> dict[str, str]:
    """This process's environment without its virtual environment or any zfnet connection setting."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ZFNET_")}


def run(*args: object, cwd: Path = ROOT, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{' '.join(map(str, args))}: exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def fresh_venv(path: Path, *requirements: object) -> Path:
    """A new virtual environment at ``path`` with ``requirements`` installed by pip; its bin folder."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    run(path / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", "-q", *requirements, timeout=INSTALL_S)
    return path / "bin"


def installed(bin_dir: Path) -> set[str]:
    """Distribution names ``pip list`` shows in the environment, lower case."""
    listed = run(bin_dir / "python", "-m", "pip", "list", "--disable-pip-version-check", "--format", "json").stdout
    return {entry["name"].lower() for entry in json.loads(listed)}


def table_rows(stdout: str) -> list[list[str]]:
    """Cells of a rich table's body rows."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in stdout.splitlines() if line.strip().startswith("│")]


def check_prediction(stdout: str) -> None:
    """``zfclient predict`` printed the top 5 classes of IMAGE as bare onnxruntime ranks them
    (probabilities to the 3 decimals printed)."""
    session = ort.InferenceSession(str(ROOT / MODEL), providers=["CPUExecutionProvider"])
    with Image.open(ROOT / IMAGE) as img:
        batch = np.asarray(img.convert("RGB"), np.float32).transpose(2, 0, 1)[None]
    logits = np.asarray(session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: batch})[0])[0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = np.argsort(-probs)[:5]
    rows = table_rows(stdout)
    assert [row[1] for row in rows] == [CIFAR10[k] for k in top], stdout
    assert np.allclose([float(row[2]) for row in rows], probs[top], atol=5e-4 + 1e-6), stdout


def normalized(distribution: str) -> str:
    """A distribution's name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def registry() -> None:
    """Skip unless pip reaches the package registry."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pip", "--disable-pip-version-check"],
                              env=environment(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("the package registry did not answer pip in 60 s: the packaging checks install from it")
    if done.returncode != 0:
        pytest.skip(f"pip cannot reach the package registry ({done.stderr.strip().splitlines()[-1:]}): the packaging checks install from it")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain copy of the tree: no .git, no virtual environment, no generated stubs."""
    copy = tmp_path_factory.mktemp("source") / "zfnet"
    shutil.copytree(ROOT, copy, ignore=NOT_IN_A_COPY, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def wheel(registry: None, source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then the wheel built from the unpacked sdist."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, source, timeout=INSTALL_S)
    assert len(list(out.glob("zfnet-*.tar.gz"))) == 1, sorted(p.name for p in out.iterdir())
    (built,) = out.glob("zfnet-*.whl")
    return built


@pytest.fixture(scope="module")
def client_only(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install zfnet`` (the wheel, no extra) in a fresh virtual environment; its bin folder."""
    return fresh_venv(tmp_path_factory.mktemp("venvs") / "client", wheel)


@pytest.mark.slow
def test_the_wheel_is_one_import_package_with_its_generated_stubs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("zfnet/", "zfnet-")) for n in names), sorted({n.split("/")[0] for n in names})
    for module in ("zfnet/v1/zfnet_pb2.py", "zfnet/v1/zfnet_pb2_grpc.py", "zfnet/converters/caffe/caffe_pb2.py",
                   "zfnet/server/app.py", "zfnet/client/cli/main.py", "zfnet/converters/expose.py", "zfnet/errors.py",
                   "zfnet/client/explore/static/index.html", "zfnet/client/explore/static/main.js", "zfnet/client/explore/static/explore.css"):
        assert module in names, f"{module} missing from {wheel.name}"
    assert not any(n.endswith("__init__.py") and n.count("/") == 1 for n in names), "zfnet is a namespace package: no zfnet/__init__.py"


@pytest.mark.slow
def test_the_client_alone_installs_no_model_code(client_only: Path) -> None:
    found = installed(client_only)
    assert "zfnet" in found and "grpcio" in found
    assert not found & MODEL_CODE, f"a client-only install pulled {sorted(found & MODEL_CODE)}"


@pytest.mark.slow
def test_the_client_alone_predicts_through_a_server(client_only: Path, server) -> None:
    target, _ = server
    assert "predict" in run(client_only / "zfclient", "--help").stdout
    check_prediction(run(client_only / "zfclient", "predict", "--model", MODEL, "--image", IMAGE, "--server", target).stdout)


@pytest.mark.slow
def test_the_client_alone_names_the_extra_a_command_needs(client_only: Path, tmp_path: Path) -> None:
    zfclient = client_only / "zfclient"
    one_line_error(run(zfclient, "predict", "--model", MODEL, "--image", IMAGE, check=False), "in-process", "pip install 'zfnet[server]'")
    one_line_error(run(zfclient, "serve", "--port", "0", check=False), "pip install 'zfnet[server]'")
    one_line_error(run(zfclient, "convert", "torch", "zfnet-cifar10", "--weights", "models/zfnet-cifar10.pt", "-o", tmp_path / "x.onnx", check=False),
                   "pip install 'zfnet[convert]'")


@pytest.mark.slow
def test_the_server_extra_predicts_in_process(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    bin_dir = fresh_venv(tmp_path_factory.mktemp("venvs") / "server", f"{wheel}[server]")
    assert {"onnx", "onnxruntime-gpu"} <= installed(bin_dir)
    check_prediction(run(bin_dir / "zfclient", "predict", "--model", MODEL, "--image", IMAGE).stdout)


@pytest.mark.slow
def test_pip_install_of_a_plain_copy_of_the_tree(registry: None, source: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    bin_dir = fresh_venv(tmp_path_factory.mktemp("venvs") / "copy", source)
    run(bin_dir / "python", "-c", "from zfnet.v1 import zfnet_pb2, zfnet_pb2_grpc; from zfnet.client.api import Client; import zfnet.client.cli.main")
    assert "predict" in run(bin_dir / "zfclient", "--help").stdout


def test_no_command_module_imports_model_code_or_the_server() -> None:
    """Loading ``zfclient`` (every command module) loads none of what only some commands need."""
    heavy = ["onnx", "onnxruntime", "torch", "sklearn", "scipy", "pyarrow", "ray", "h5py", "zfnet.server", "zfnet.converters"]
    script = f"import sys, zfnet.client.cli.main; print([m for m in {heavy!r} if m in sys.modules])"
    assert run(sys.executable, "-c", script).stdout.strip() == "[]"


def test_every_extra_named_in_a_message_installs_that_module() -> None:
    """``zfnet.extras``: each module's extra (with the extras it includes) requires a distribution
    that provides the module, as installed here."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def distributions(extra: str) -> set[str]:
        names = set()
        for requirement in optional[extra]:
            name = normalized(re.split(r"[^A-Za-z0-9_.-]", requirement, maxsplit=1)[0])
            included = re.match(r"zfnet\[(.+)\]", requirement)
            names |= set().union(*(distributions(e) for e in included.group(1).split(","))) if included else {name}
        return names

    providers = importlib.metadata.packages_distributions()
    for module, extra in extras.EXTRAS.items():
        assert extra in optional, f"{module}: no extra {extra!r} in pyproject.toml"
        provided_by = {normalized(d) for d in providers.get(module, [])}
        assert provided_by & distributions(extra), f"{module} comes from {sorted(provided_by)}, none of them in zfnet[{extra}]"


def test_a_missing_optional_module_is_one_line_naming_its_extra() -> None:
    assert str(extras.missing(ModuleNotFoundError("no sklearn", name="sklearn.linear_model"))) == (
        "this command needs sklearn, which is not installed here: pip install 'zfnet[probe]'")
    assert "pip install 'zfnet[convert]'" in str(extras.missing(ModuleNotFoundError("no onnx", name="onnx"), "convert"))
    assert extras.missing(ModuleNotFoundError("a bug", name="zfnet.no_such_module")) is None  # not an extra's: raised as it is
