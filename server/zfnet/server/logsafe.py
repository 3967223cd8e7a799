"""Log lines never carry a client's control characters: every string argument of a record logged
through the server's logger is escaped (newlines, ANSI escapes, bidi overrides) and cut short, so a
model name or a layer name cannot forge log lines."""

from __future__ import annotations

import logging

MAX_CHARS = 300


def escape(text: str, limit: int = MAX_CHARS) -> str:
    """Non-printable characters as Python escapes (idempotent on its own output), at most ``limit`` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + (f"...(+{len(text) - limit} chars)" if len(text) > limit else "")


class EscapeArgs(logging.Filter):
    """Escape the string arguments of every record (the format string is the code's own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(escape(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: escape(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install(logger: logging.Logger) -> None:
    """Add the filter once."""
    if not any(isinstance(f, EscapeArgs) for f in logger.filters):
        logger.addFilter(EscapeArgs())
