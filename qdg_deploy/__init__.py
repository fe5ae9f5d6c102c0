"""qdg-deploy: quantization-aware domain generalization, from training to a measured deployment."""

__version__ = "0.1.0"
