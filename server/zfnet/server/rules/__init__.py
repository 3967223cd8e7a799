"""The op registry, one module per op family; importing this package registers every entry."""

from zfnet.server.rules.registry import (
    FLOAT_TYPES, RULES, OpRule, Role, Weights, batch_axes, feature_axes, lookup, lookup_node, op, schema_version, supported, weights_of,
)
from zfnet.server.rules import activation, arithmetic, conv, linear, norm, pool, reduce, resize, shape  # noqa: E402,F401  (registers)

__all__ = [
    "FLOAT_TYPES", "RULES", "OpRule", "Role", "Weights", "batch_axes", "feature_axes", "lookup", "lookup_node", "op", "schema_version", "supported",
    "weights_of",
]
