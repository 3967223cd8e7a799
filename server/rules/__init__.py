"""Backward rules, one module per op family; importing this package registers them all."""

from zfnet.server.rules.registry import BACKWARD_RULES, attribute, backward_rule
from zfnet.server.rules import activation, arithmetic, conv, linear, norm, pool, shape  # noqa: E402,F401  (registers)

__all__ = ["BACKWARD_RULES", "attribute", "backward_rule"]
