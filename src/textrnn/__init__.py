"""textrnn: recurrent text classifiers from raw data to a registered, GPU-served ONNX model."""

__version__ = "0.1.0"
