"""zfnet: see what a CNN has learned (Zeiler & Fergus 2013) for any ONNX model, as a service."""

__version__ = "0.1.0"
