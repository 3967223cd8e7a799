"""Build hook: the gRPC stubs and the Caffe message classes are generated from their .proto files
at build time (wheel, sdist-to-wheel and editable installs alike), never committed."""

from __future__ import annotations

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).resolve().parent
# (include folder, .proto file, output folder, with gRPC service stubs)
PROTOS = (
    ("proto", "proto/zfnet/v1/zfnet.proto", "core", True),
    ("converters/zfnet/converters/caffe", "converters/zfnet/converters/caffe/caffe.proto", "converters/zfnet/converters/caffe", False),
)


def generate(root: Path = ROOT) -> None:
    """Run protoc (from grpcio-tools) over every .proto this package generates code from."""
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    include = str(Path(protoc.__file__).parent / "_proto")
    for source_root, proto, out, grpc in PROTOS:
        args = ["protoc", f"-I{root / source_root}", f"-I{include}", f"--python_out={root / out}", f"--pyi_out={root / out}"]
        if grpc:
            args.append(f"--grpc_python_out={root / out}")
        if protoc.main([*args, str(root / proto)]) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class StubsHook(BuildHookInterface):
    PLUGIN_NAME = "stubs"

    def initialize(self, version: str, build_data: dict) -> None:
        generate(Path(self.root))


if __name__ == "__main__":
    generate()
