"""deploykit: PyTorch -> ONNX -> NCNN, with parity checked after every stage."""

__version__ = "0.1.0"
