"""File names the client writes that hold a tensor's name (``Mixed_6e:2``, ``/layer1/Conv_output_0``):
only letters, digits, ``.``, ``_`` and ``-``, so that every file system (Windows included) stores them."""

from __future__ import annotations

import re


def safe_name(text: str) -> str:
    """``text`` with every run of other characters as one ``_`` (``Mixed_6e:2`` -> ``Mixed_6e_2``); never empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "layer"
