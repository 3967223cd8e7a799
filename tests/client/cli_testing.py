"""What the CLI tests share: ``zfclient`` run in this process (Typer's runner) and its success check.
A module with a unique name, imported by the test modules; the fixtures are in conftest.py."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from zfnet.client.cli.main import app


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """``zfclient ARGS`` (each argument as its ``str``), with ``env`` added to the environment."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def ok(result: Result) -> None:
    """The command exited 0; else its output and exception in the failure message."""
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
