"""Every client test runs as a user types commands in a checkout: from the repository's root, with
no server, token or TLS setting from the environment or from an earlier command's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from zfnet.client import transport

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def as_a_user_in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative model paths resolve from the repository's root; ``ZFNET_SERVER`` and the other
    connection variables are unset, and no connection is left over from another test's options."""
    monkeypatch.chdir(ROOT)
    for name in (transport.SERVER_ENV, transport.TOKEN_ENV, transport.TLS_ENV, transport.TLS_CA_ENV, transport.TLS_CERT_ENV, transport.TLS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(transport, "cli_connection", None)
