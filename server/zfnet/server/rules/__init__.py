"""The op registry, one module per op family; importing this package registers every entry."""

from zfnet.server.rules.registry import RULES, OpRule, Role, batch_axes, lookup, lookup_node, op, supported
from zfnet.server.rules import activation, arithmetic, conv, linear, norm, pool, reduce, resize, shape  # noqa: E402,F401  (registers)

__all__ = ["RULES", "OpRule", "Role", "batch_axes", "lookup", "lookup_node", "op", "supported"]
