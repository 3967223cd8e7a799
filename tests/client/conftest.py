"""Every client test runs as a user types commands in a checkout: from the repository's root, with
no server, token or TLS setting from the environment or from an earlier command's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from zfnet.client import api

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def as_a_user_in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative model paths resolve from the repository's root; ``ZFNET_SERVER`` and the other
    connection variables are unset, and no connection is left over from another test's options."""
    monkeypatch.chdir(ROOT)
    for name in (api.SERVER_ENV, api.TOKEN_ENV, api.TLS_ENV, api.TLS_CA_ENV, api.TLS_CERT_ENV, api.TLS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(api, "cli_connection", None)
