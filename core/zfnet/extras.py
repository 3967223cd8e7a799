"""Which optional extra of the ``zfnet`` distribution brings a module, so that a client-only install
(``pip install zfnet``) answers a command that needs more with one line naming the extra to install,
never an ImportError's traceback. The extras themselves are declared in pyproject.toml."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from zfnet.errors import FailedPrecondition

F = TypeVar("F", bound=Callable)

# top-level import name -> the extra that installs it (a test checks these against pyproject.toml)
EXTRAS: dict[str, str] = {
    "onnx": "server",
    "onnxruntime": "server",
    "grpc_health": "server",
    "grpc_reflection": "server",
    "scipy": "server",
    "prometheus_client": "server",
    "torch": "convert",
    "onnxscript": "convert",
    "h5py": "convert",
    "sklearn": "probe",
    "pyarrow": "probe",
    "ray": "ray",
    "starlette": "explore",
    "uvicorn": "explore",
}


def missing(err: ImportError, extra: str | None = None) -> FailedPrecondition | None:
    """The one-line error for ``err`` when the module it misses comes with an extra (``extra``, where
    the caller knows which one it needs; else the module's own); None when it does not (a real bug,
    to be raised as it is)."""
    module = (err.name or "").partition(".")[0]
    if module not in EXTRAS:
        return None
    return FailedPrecondition(f"this command needs {module}, which is not installed here: pip install 'zfnet[{extra or EXTRAS[module]}]'")


def explained(command: F, extra: str | None = None) -> F:
    """Wrap a CLI command (that needs ``extra``, if given) so that a missing optional dependency
    becomes :func:`missing`'s error."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ImportError as err:
            error = missing(err, extra)
            if error is None:
                raise
            raise error from None

    return wrapper  # type: ignore[return-value]
