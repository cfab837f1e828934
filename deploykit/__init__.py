"""deploykit: PyTorch -> ONNX -> NCNN, with parity checked after every stage.

    import deploykit
    result = deploykit.convert(model, example_inputs)        # or deploykit.convert("model.onnx")
    config = deploykit.load_config("configs/mobile.yaml", {"converter.fp16": True})
    result = deploykit.run(config)
"""

from typing import Any

__version__ = "0.1.0"

_API = ("convert", "load_config", "run", "Result")
__all__ = [*_API, "DeployError", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the child processes deploykit starts import this package too.
    if name in _API:
        from deploykit import api

        return getattr(api, name)
    if name == "DeployError":
        from deploykit.core.errors import DeployError

        return DeployError
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
