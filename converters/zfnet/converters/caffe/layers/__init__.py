"""One module per Caffe layer family; importing this package registers every converter."""

from zfnet.converters.caffe.layers import activation, conv, eltwise, inner_product, lrn, normalization, pooling, tensor

__all__ = ["activation", "conv", "eltwise", "inner_product", "lrn", "normalization", "pooling", "tensor"]
