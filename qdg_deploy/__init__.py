"""qdg-deploy: quantization-aware domain generalization, from training to a measured deployment.

The Python API (`quantize`, `calibrate`, `export_onnx`: qdg_deploy/api.py) loads on first use, so that
`import qdg_deploy` (and the CLI's start) does not import torch."""

from .version import __version__ as __version__  # noqa: F401 (the package version)

_API = ("quantize", "calibrate", "export_onnx")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'qdg_deploy' has no attribute {name!r}")
