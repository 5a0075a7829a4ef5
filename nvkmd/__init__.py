"""nvkmd: keeps NVIDIA's open kernel modules built for every installed kernel."""

__version__ = "0.1.0"
