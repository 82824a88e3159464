"""threedrs: 3D-aware representation supervision (3DRS) for multimodal LLMs, and its 3D-awareness probe."""

__version__ = "0.1.0"
