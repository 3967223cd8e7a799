"""The docs site: its reference pages cover everything the code defines (docs/gen/reference.py), its
command blocks are all accounted for (docs/gen/commands.py), and it builds in strict mode."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import typer
import yaml
from PIL import Image

from zfnet.errors import REASONS

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> ModuleType:
    """A module of docs/gen/ (not a package: mkdocs runs its files as scripts)."""
    spec = importlib.util.spec_from_file_location(f"docs_gen_{name}", ROOT / "docs" / "gen" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reference = load("reference")
commands = load("commands")
rst_roles = load("rst_roles")


def test_cli_page_has_every_command_option_default_and_help() -> None:
    from zfnet.client.cli.main import app

    page = reference.cli_page()
    group = typer.main.get_command(app)
    seen = 0
    for name, command in reference.commands(group, "zfclient"):
        if name == "zfclient serve":  # its options are zfserver's, documented under zfserver
            continue
        section = page.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            row = next(line for line in section.split("\n") if line.startswith(f"| {reference.param_names(param)} |"))
            assert reference.cell(param.help or "") in row, (name, row)
            if not param.required and not param.is_flag and param.default not in (None, [], ()):
                assert f"| {reference.cell(reference.default_text(param))} |" in row, (name, row)
            seen += 1
    assert seen > 100  # every command's options, not a few
    assert "## `zfclient convert caffe`" in page and "## `zfserver`" in page
    assert "| `--k` | INTEGER |" in page and "| `--image` | PATH, repeatable | required |" in page


def test_help_texts_carry_no_raw_markup() -> None:
    """Typer prints help through Rich: docstring markup (``x``, :class:`x`) would reach the terminal as
    written, and what Rich reads as its own markup (``[default: 9]``, ``zfnet[server]``) would vanish."""
    from rich.markup import render

    from zfnet.client.cli.main import app

    markup = re.compile(r"``|:(class|func|meth|data|mod|attr):`")
    for name, command in [("zfclient", typer.main.get_command(app)), *reference.commands(typer.main.get_command(app), "zfclient")]:
        texts = [command.help or "", *(getattr(param, "help", None) or "" for param in command.params)]
        assert not [text for text in texts if markup.search(text)], name
        assert not [text for text in texts if render(text).plain != text], name


def test_cli_types_and_defaults_read_as_typed() -> None:
    from enum import Enum

    class Colour(Enum):
        RED = "red"
        BLUE = "blue"

    assert reference.annotation_text(list[Path]) == "PATH, repeatable"
    assert reference.annotation_text(int | None) == "INTEGER"
    assert reference.annotation_text(Colour) == "red \\| blue"
    assert reference.cell("a | b <c>\n d") == "a \\| b &lt;c&gt; d"


def test_grpc_page_has_every_rpc_message_field_and_enum_with_its_comment() -> None:
    from zfnet.v1 import zfnet_pb2

    page = reference.grpc_page()
    file = zfnet_pb2.DESCRIPTOR
    for method in file.services_by_name["Zfnet"].methods:
        assert f"### `{method.name}`" in page
    for message in file.message_types_by_name.values():
        assert f"### `{message.name}` {{ #zfnet-v1-{message.name} }}" in page
        for field in message.fields:
            assert f"| `{field.name}` | {field.number} |" in page, (message.name, field.name)
    for enum in file.enum_types_by_name.values():
        assert f"### `{enum.name}` {{ #zfnet-v1-{enum.name} }}" in page
        for value in enum.values:
            assert f"| `{value.name}` | {value.number} |" in page
    # leading comments come through: the file's header and a service method's
    assert "MESSAGE SIZES." in page
    assert "Whether the server holds a model, by SHA-256 or name; upload only when it does not." in page
    # map fields read as maps, not as the synthetic entry message
    assert "ActivationsEntry" not in page and "map&lt;`string`, [`Tensor`](#zfnet-v1-Tensor)&gt;" in page


def test_ops_page_lists_every_entry_of_the_registry() -> None:
    from zfnet.server import rules

    page = reference.ops_page()
    for (domain, op_type), entries in rules.RULES.items():
        for entry in entries:
            versions = ", ".join(str(v) for v in entry.versions)
            assert f"| `{op_type}` | {domain or 'ai.onnx'} | {versions} |" in page
    assert re.search(r"\| `MaxPool` \| ai.onnx \| [\d, ]+ \| block \|  \| output 1 \|", page)
    assert "| `Conv` | ai.onnx | 1, 11, 22 | learned when its filters are constant" in page


def test_errors_page_lists_every_reason() -> None:
    page = reference.errors_page()
    for reason, meaning in REASONS.items():
        assert f"| `{reason}` | {reference.cell(meaning)} |" in page


def test_python_page_documents_the_client_and_every_wire_module() -> None:
    page = reference.python_page()
    assert "::: zfnet.client.api.Client" in page
    wire = sorted(p.stem for p in (ROOT / "core" / "zfnet" / "wire").glob("*.py") if not p.stem.startswith("_"))
    assert wire and all(f"::: zfnet.wire.{name}\n" in page for name in wire)


def test_sphinx_roles_read_as_code_on_the_api_page() -> None:
    assert rst_roles.plain("see :class:`~zfnet.client.transport.Transport` and :data:`REASONS`") == "see `Transport` and `REASONS`"
    assert rst_roles.plain(":func:`zfnet.topk.merge` and ``x``") == "`zfnet.topk.merge` and ``x``"


def test_every_block_of_the_checked_pages_names_its_language() -> None:
    """A block without a language would escape the commands test; text output is ```text."""
    for page in commands.pages():
        for block in commands.blocks(page):
            assert block.language, f"{block.where()}: name the block's language (bash for commands, text for output)"


def test_every_guide_is_checked_and_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    guides = sorted(f"docs/guides/{p.name}" for p in (ROOT / "docs" / "guides").glob("*.md"))
    assert set(guides) <= set(commands.PAGES)
    assert all(f": {g.removeprefix('docs/')}" in nav for g in guides)


def test_readme_is_short_and_its_links_resolve() -> None:
    """The README guides and links into the docs (the strict build checks the site's links, not the
    README's): at most 150 lines, the two set-up commands CI runs, every relative link a file here."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    setup = next(block for block in commands.blocks("README.md") if block.skip)
    assert [line.split("#")[0].strip() for line in setup.text.splitlines()] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    targets = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert targets and not [target for target in targets if target and not (ROOT / target).exists()]


def test_markers_are_read_and_refused_when_wrong(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "<!-- commands: skip (starts a server) -->\n```bash\nzfserver\n```\n\n"
        "<!-- commands: writes out/x.png out/y.json -->\n```bash\nls\n```\n\n```python\nprint(1)\n```\n"
    )
    skip, writes, python = commands.blocks("a.md", tmp_path)
    assert (skip.skip, skip.runs, skip.text) == ("starts a server", False, "zfserver")
    assert (writes.writes, writes.runs, writes.line) == (("out/x.png", "out/y.json"), True, 7)
    assert (python.language, python.runs) == ("python", False)
    (tmp_path / "b.md").write_text("<!-- commands: skip -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="must say why"):
        commands.blocks("b.md", tmp_path)
    (tmp_path / "c.md").write_text("<!-- commands: skip (x) -->\n\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="right before a fenced block"):
        commands.blocks("c.md", tmp_path)


def test_nav_names_every_page_once() -> None:
    """The strict build fails on a page left out of the nav; this says which, without a build."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))

    def leaves(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [leaf for value in node.values() for leaf in leaves(value)]
        return [leaf for item in node for leaf in leaves(item)]

    nav = leaves(config["nav"])
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md") if "gen" not in p.parts}
    generated = {f"reference/{name}" for name in reference.PAGES}
    assert len(nav) == len(set(nav))
    assert set(nav) == on_disk | generated


@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for page in ["reference/cli/index.html", "reference/grpc/index.html", "reference/python/index.html", "guides/top/index.html", "changelog/index.html"]:
        assert (tmp_path / "site" / page).stat().st_size > 1000, page
    python = (tmp_path / "site" / "reference" / "python" / "index.html").read_text()
    for name in ["zfnet.client.api.Client.deconv", "zfnet.client.api.Client.top", "zfnet.wire.deconv.DeconvResult", "zfnet.wire.top.TopResult"]:
        assert f'id="{name}"' in python, name  # mkdocstrings rendered the client (its facades' methods too) and zfnet.wire
    assert ":class:" not in python


# ---- every command of the README and the guides runs as pasted ---------------------------------

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "out", "site", "node_modules", "__pycache__", ".pytest_cache", ".hypothesis", ".cache", "*.egg-info")
SHARED_MODELS = ROOT.parent / "shared" / "models"


def image_folders(root: Path, per_class: int, classes: list[str] | None = None, size: int | None = None) -> None:
    """``root/<class>/<n>.jpg``: the bundled samples of each class repeated to ``per_class`` images
    (resized to ``size`` when given), a small stand-in for a data set of the same layout."""
    for folder in sorted(p for p in (ROOT / "samples" / "cifar10").iterdir() if p.is_dir()):
        if classes is not None and folder.name not in classes:
            continue
        (root / folder.name).mkdir(parents=True)
        samples = sorted(folder.glob("*.jpg"))
        for n in range(per_class):
            source = samples[n % len(samples)]
            target = root / folder.name / f"{n:04d}.jpg"
            if size is None:
                shutil.copyfile(source, target)
            else:
                Image.open(source).convert("RGB").resize((size, size)).save(target)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the working tree (its .venv linked) with a small ``../shared`` beside it: CIFAR-10
    test and training folders of the bundled samples (32 and 10 a class; the probe needs 30 training
    images and at least one test image a class), 3 Tiny ImageNet-like classes of 64x64 images, and
    the shared Caffe models where this checkout has them."""
    base = tmp_path_factory.mktemp("docs-commands")
    work = base / "zfnet"
    shutil.copytree(ROOT, work, symlinks=True, ignore=COPY_IGNORE)
    (work / ".venv").symlink_to(ROOT / ".venv")
    data = base / "shared" / "data"
    image_folders(data / "cifar10" / "test", 32)
    image_folders(data / "cifar10" / "train", 10)
    image_folders(data / "tiny-imagenet" / "train", 32, ["cat", "dog", "ship"], size=64)
    if SHARED_MODELS.is_dir():
        (base / "shared" / "models").symlink_to(SHARED_MODELS.resolve())
    return work


@pytest.mark.slow
@pytest.mark.parametrize("page", commands.pages())
def test_commands_run_as_pasted(tree: Path, page: str) -> None:
    """Each bash block of the page, run from the repository root as a reader pastes it: it exits 0
    and writes the files its marker names. Pages run in order (later ones read what earlier wrote)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZFNET_")}
    for block in commands.blocks(page, tree):
        if not block.runs:
            continue
        if ("../shared/models" in block.text or "out/cifar10_quick" in block.text) and not SHARED_MODELS.is_dir():
            pytest.skip(f"{block.where()} needs the shared Caffe models (directly or through the Caffe guide's conversions), which this checkout has not")
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, f"{block.where()} exited {run.returncode}:\n{block.text}\n--- stderr:\n{run.stderr[-4000:]}"
        missing = [path for path in block.writes if not (tree / path).exists()]
        assert not missing, f"{block.where()} did not write {missing}; stdout:\n{run.stdout[-3000:]}"
