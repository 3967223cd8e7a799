"""Caffe -> ONNX without Caffe: prototxt + ``.caffemodel`` / ``.caffemodel.h5``, every layer exposed,
preprocessing carried.

``caffe_pb2`` is generated from ``caffe.proto`` (see the command at the top of that file).
"""

from zfnet.converters.caffe.driver import convert, save

__all__ = ["convert", "save"]
