"""The reference pages of the docs site, generated from the code so they cannot drift from it.

``mkdocs build`` runs this file (the mkdocs-gen-files plugin, ``mkdocs.yml``) and writes the pages
under ``reference/`` of the site without committing them:

- ``cli.md``: every ``zfclient`` command (and ``zfserver``) with its arguments, options, defaults
  and help, read from the Typer app as click sees it;
- ``grpc.md``: the gRPC contract from ``proto/zfnet/v1/zfnet.proto``, compiled by protoc with its
  source info: services, messages, fields and enums with their leading comments;
- ``ops.md``: the ONNX ops of the op registry (``zfnet.server.rules``): domain, schema versions
  covered, role in the paper's layer numbering, filters and switches;
- ``errors.md``: the stable error reasons of ``zfnet.errors.REASONS``;
- ``python.md``: mkdocstrings directives over ``zfnet.client.api`` and every ``zfnet.wire`` module.

Each page is a pure function of the code returning Markdown; ``tests/test_docs.py`` imports them.
"""

from __future__ import annotations

import enum
import inspect
import pkgutil
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "zfnet" / "v1" / "zfnet.proto"
GENERATED = "*Generated from the code by `docs/gen/reference.py` when the site is built; do not edit.*"


def cell(text: object) -> str:
    """Text safe inside one Markdown table cell: one line, pipes and angle brackets escaped."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


# ---- the command line ------------------------------------------------------------------------


# Typer builds click commands (recent versions from a copy of click of their own): they are read here by
# their attributes, never by class, so the page does not depend on which click it is.
Command = Any


def is_group(command: Command) -> bool:
    return hasattr(command, "list_commands")


def commands(group: Command, prefix: str) -> Iterator[tuple[str, Command]]:
    """Every command under ``group``, depth first in the order the app lists them, by full name."""
    ctx = group.context_class(group, info_name=prefix)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        if is_group(command):
            yield from commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def is_option(param: Command) -> bool:
    return param.param_type_name == "option"


def default_text(param: Command) -> str:
    """A parameter's default as a user would type it ('' when it has none or it is required)."""
    value = param.default
    if param.required or value is None or callable(value) or value == ():
        return ""
    if is_option(param) and param.is_flag:
        return param.opts[0] if value else ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH", bool: "BOOLEAN"}


def annotation_text(annotation: object) -> str:
    """A parameter's Python type as the CLI takes it: TEXT, INTEGER, PATH, an enum's values."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(str(member.value) for member in annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple):
        return f"{annotation_text(args[0])}, repeatable" if args else "TEXT, repeatable"
    if args:  # Optional[X], X | None
        return annotation_text(args[0])
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())  # type: ignore[arg-type]


def type_text(param: Command) -> str:
    """What a parameter takes: a flag, or its type."""
    if is_option(param) and param.is_flag:
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return annotation_text(descriptor.annotation)
    kind: Any = getattr(param, "type", None)  # click's own parameters (typer before its click copy)
    if hasattr(kind, "choices"):
        return " \\| ".join(str(c) for c in kind.choices)
    name = (getattr(kind, "name", None) or "text").upper()
    return f"{name}, repeatable" if getattr(param, "multiple", False) else name


def param_names(param: Command) -> str:
    """An option's flags (``--x``, ``-x``) or an argument's metavar (``NAME``), as code."""
    if is_option(param):
        return ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    return f"`{(param.name or '').upper()}`"


def command_section(name: str, command: Command) -> list[str]:
    """One command: heading, help, usage, then its arguments and options as a table."""
    ctx = command.context_class(command, info_name=name)
    lines = [f"## `{name}`", "", inspect.cleandoc(command.help or ""), "", "```", command.get_usage(ctx), "```", ""]
    rows = []
    for param in command.params:
        if is_option(param) and param.hidden:
            continue
        names = param_names(param)
        help_text = getattr(param, "help", None) or ""
        if getattr(param, "envvar", None):
            help_text += f" (environment: ${param.envvar})"
        rows.append([names, type_text(param), "required" if param.required else default_text(param), help_text])
    if rows:
        lines += table(["argument or option", "takes", "default", "what it does"], rows) + [""]
    return lines


def cli_page() -> str:
    """The ``zfclient`` and ``zfserver`` reference, from the Typer apps."""
    from zfnet.client.cli.main import app
    from zfnet.server import app as server

    zfclient = typer.main.get_command(app)
    serve_cli = typer.Typer(add_completion=False)
    serve_cli.command()(server.command)
    zfserver = typer.main.get_command(serve_cli)
    lines = [
        "# Command line", "", GENERATED, "",
        "`zfclient` talks to a zfnet server (`--server HOST:PORT`, or one it starts in-process when none is given); "
        "the connection options go before the command (`zfclient --server HOST:PORT deconv ...`). "
        "`zfserver` runs the server; `zfclient serve` takes the same options.", "",
    ]
    lines += command_section("zfclient", zfclient)
    for name, command in commands(zfclient, "zfclient"):
        if name != "zfclient serve":
            lines += command_section(name, command)
    lines += command_section("zfserver", zfserver)
    return "\n".join(lines)



# ---- the gRPC contract -----------------------------------------------------------------------

# FileDescriptorProto and DescriptorProto field numbers in a SourceCodeInfo location's path
MESSAGE_TYPE, ENUM_TYPE, SERVICE, SYNTAX = 4, 5, 6, 12
FIELD, NESTED_TYPE, NESTED_ENUM = 2, 3, 4
ENUM_VALUE, METHOD = 2, 2


def descriptor(proto: Path = PROTO):
    """The proto file compiled with its comments (``protoc --include_source_info``)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "zfnet.pb"
        args = ["protoc", f"-I{proto.parents[2]}", "--include_source_info", f"--descriptor_set_out={out}", str(proto.relative_to(proto.parents[2]))]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc could not compile {proto}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[0]


def comment(text: str) -> str:
    """A proto comment as Markdown paragraphs (one space of indentation dropped, blank lines kept)."""
    return inspect.cleandoc("\n".join(line[1:] if line.startswith(" ") else line for line in text.split("\n"))).strip()


def anchor(full_name: str) -> str:
    return full_name.lstrip(".").replace(".", "-")


def type_link(full_name: str, package: str) -> str:
    """A link to a type of this file, or the type's name when it is another file's."""
    name = full_name.lstrip(".")
    short = name.removeprefix(package + ".")
    return f"[`{short}`](#{anchor(name)})" if name.startswith(package + ".") else f"`{name}`"


def field_type(field, package: str, maps: dict) -> str:
    """A field's type: a scalar, a link to a message or enum of this file, ``map<K, V>`` or ``repeated T``."""
    from google.protobuf import descriptor_pb2 as d

    if field.type_name.lstrip(".") in maps:
        key, value = maps[field.type_name.lstrip(".")].field
        return f"map&lt;{field_type(key, package, maps)}, {field_type(value, package, maps)}&gt;"
    names = {v: k.removeprefix("TYPE_").lower() for k, v in d.FieldDescriptorProto.Type.items()}
    kind = type_link(field.type_name, package) if field.type_name else f"`{names[field.type]}`"
    return f"repeated {kind}" if field.label == d.FieldDescriptorProto.LABEL_REPEATED else kind


def grpc_page(proto: Path = PROTO) -> str:
    """The contract: services and their methods, then every message and enum, with their comments."""
    file = descriptor(proto)
    comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location if loc.leading_comments}
    syntax = next((loc for loc in file.source_code_info.location if list(loc.path) == [SYNTAX]), None)
    header = [*syntax.leading_detached_comments, syntax.leading_comments] if syntax is not None else []  # the file's opening comment
    package = file.package
    maps = _map_entries(file.message_type, package)
    lines = ["# gRPC contract", "", GENERATED, "",
             f"Package `{package}`, from `proto/zfnet/v1/zfnet.proto` (its comments are the documentation below).", ""]
    lines += [comment(block) + "\n" for block in header if block.strip()]

    for s, service in enumerate(file.service):
        lines += [f"## Service `{service.name}` {{ #{anchor(package + '.' + service.name)} }}", "", comment(comments.get((SERVICE, s), "")), ""]
        for m, method in enumerate(service.method):
            request = ("stream " if method.client_streaming else "") + type_link(method.input_type, package)
            reply = ("stream " if method.server_streaming else "") + type_link(method.output_type, package)
            lines += [f"### `{method.name}`", "", f"{request} → {reply}", "", comment(comments.get((SERVICE, s, METHOD, m), "")), ""]

    lines += ["## Messages", ""]
    for path, message, name in _messages(file.message_type, (MESSAGE_TYPE,), package):
        lines += [f"### `{name.removeprefix(package + '.')}` {{ #{anchor(name)} }}", "", comment(comments.get(path, "")), ""]
        oneofs = [o.name for o in message.oneof_decl]
        rows = []
        for f, field in enumerate(message.field):
            kind = field_type(field, package, maps)
            if field.HasField("oneof_index") and not field.proto3_optional:
                kind += f" (oneof `{oneofs[field.oneof_index]}`)"
            rows.append([f"`{field.name}`", field.number, kind, comment(comments.get((*path, FIELD, f), ""))])
        if rows:
            lines += table(["field", "number", "type", "meaning"], rows) + [""]
    lines += ["## Enums", ""]
    for path, enum_type, name in _enums(file, package):
        lines += [f"### `{name.removeprefix(package + '.')}` {{ #{anchor(name)} }}", "", comment(comments.get(path, "")), ""]
        rows = [[f"`{v.name}`", v.number, comment(comments.get((*path, ENUM_VALUE, i), ""))] for i, v in enumerate(enum_type.value)]
        lines += table(["value", "number", "meaning"], rows) + [""]
    return "\n".join(lines)


def _messages(messages, path: tuple[int, ...], scope: str) -> Iterator[tuple[tuple[int, ...], Any, str]]:
    """Every message, nested ones after their parent, with its source path and full name (map entries left out)."""
    for i, message in enumerate(messages):
        if message.options.map_entry:
            continue
        here, name = (*path, i), f"{scope}.{message.name}"
        yield here, message, name
        yield from _messages(message.nested_type, (*here, NESTED_TYPE), name)


def _map_entries(messages, scope: str) -> dict[str, Any]:
    """The synthetic ``XEntry`` messages protoc makes for map fields, by full name."""
    found: dict[str, Any] = {}
    for message in messages:
        name = f"{scope}.{message.name}"
        if message.options.map_entry:
            found[name] = message
        found.update(_map_entries(message.nested_type, name))
    return found


def _enums(file, package: str) -> Iterator[tuple[tuple[int, ...], Any, str]]:
    """Every enum: top-level ones, then those nested in messages."""
    for i, enum_type in enumerate(file.enum_type):
        yield (ENUM_TYPE, i), enum_type, f"{package}.{enum_type.name}"
    for path, message, name in _messages(file.message_type, (MESSAGE_TYPE,), package):
        for i, enum_type in enumerate(message.enum_type):  # type: ignore[attr-defined]
            yield (*path, NESTED_ENUM, i), enum_type, f"{name}.{enum_type.name}"


# ---- the op registry -------------------------------------------------------------------------


def describe(fn: Callable | None) -> str:
    """A rule function by its name and module family, e.g. ``conv.window_field``."""
    if fn is None:
        return ""
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn))).split('.<locals>')[0]}"


def ops_page() -> str:
    """Every op of the registry: domain, schema versions covered, role, filters, switches, its rule."""
    from zfnet.server import rules

    rows = []
    for (domain, op_type), entries in sorted(rules.RULES.items(), key=lambda kv: (kv[0][0], kv[0][1].lower())):
        for entry in sorted(entries, key=lambda e: e.versions):
            role = entry.role.value if isinstance(entry.role, rules.Role) else f"per node ({describe(entry.role)})"
            if entry.weights is not None:
                role = f"learned when its filters are constant, else {role}"
            rows.append([
                f"`{op_type}`", domain or "ai.onnx", ", ".join(str(v) for v in entry.versions), role,
                "yes" if entry.weights is not None else "", "" if entry.switches is None else f"output {entry.switches}",
                describe(entry.backward),
            ])
    count = len({key for key in rules.RULES})
    lines = [
        "# Supported ops", "", GENERATED, "",
        f"The {count} ONNX ops the op registry (`server/zfnet/server/rules/`) has a backward rule for. A node resolves to the "
        "schema its model's opset selects; a schema version no entry covers is refused (`UNSUPPORTED_OP`), and so is an op "
        "with no entry, naming the op and node. *Role* is the op's place in the paper's layer numbering: a **learned** layer "
        "(convolution, fully connected) starts a layer, **block** ops (nonlinearity, normalisation, pooling) extend it, "
        "**other** ops end it. *Filters*: what `zfclient filters` shows. *Switches*: the output holding max-pool switches, "
        "which the expose pass adds. How to add an op: [the op registry](../design/ops.md).", "",
    ]
    lines += table(["op", "domain", "schema versions", "role", "filters", "switches", "backward rule"], rows)
    return "\n".join(lines) + "\n"


# ---- error reasons ---------------------------------------------------------------------------


def errors_page() -> str:
    """The stable reasons (``ErrorInfo.reason``) a client may branch on."""
    from zfnet.errors import DOMAIN, REASONS

    lines = [
        "# Error reasons", "", GENERATED, "",
        f"Every error the server sends carries a `google.rpc.ErrorInfo` with domain `{DOMAIN}` and one of these reasons "
        "(`zfnet.errors.REASONS`), beside its status code and a one-line message naming the problem; "
        "[From other languages](../clients.md#errors) shows how to read them.", "",
    ]
    lines += table(["reason", "meaning"], [[f"`{reason}`", meaning] for reason, meaning in REASONS.items()])
    return "\n".join(lines) + "\n"


# ---- the Python API --------------------------------------------------------------------------


def wire_modules() -> list[str]:
    """Every module of ``zfnet.wire``, as found on disk."""
    import zfnet.wire

    return sorted(f"zfnet.wire.{m.name}" for m in pkgutil.iter_modules(zfnet.wire.__path__) if not m.name.startswith("_"))


def python_page() -> str:
    """mkdocstrings directives: the client, then each analysis's request and result types."""
    lines = [
        "# Python API", "", GENERATED, "",
        "`zfnet.client.api.Client` talks to a server (or starts one in-process); its methods return the result types of "
        "`zfnet.wire`, one module per analysis, which the server's engine returns too.", "",
        "## The client", "", "::: zfnet.client.api.Client", "    options:", "      inherited_members: true", "",
        "## Request and result types (`zfnet.wire`)", "",
    ]
    for module in wire_modules():
        lines += [f"::: {module}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines)


PAGES: dict[str, Callable[[], str]] = {
    "cli.md": cli_page,
    "grpc.md": grpc_page,
    "ops.md": ops_page,
    "errors.md": errors_page,
    "python.md": python_page,
}


def main() -> None:
    """Write every page into the site being built (mkdocs-gen-files)."""
    import mkdocs_gen_files

    for name, page in PAGES.items():
        with mkdocs_gen_files.open(f"reference/{name}", "w") as out:
            out.write(page())


if __name__ == "<run_path>":  # mkdocs-gen-files runs this file with runpy.run_path
    main()
elif __name__ == "__main__":  # python docs/gen/reference.py [DIR]: the pages as files, to read without a build
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "site/reference")
    target.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        (target / name).write_text(page())
        print(target / name)
