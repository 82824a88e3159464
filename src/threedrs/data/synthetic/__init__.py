"""SynthRooms: a procedural indoor benchmark written in the real ScanNet / Video-3D LLM on-disk layout.

`generate(cfg, out)` renders rooms of boxy furniture (colour JPEG, 16-bit depth PNG in mm, camera-to-world poses,
intrinsics, axis alignment, annotation mesh with instances) and writes ScanRefer, Multi3DRefer, Scan2Cap, ScanQA
and SQA3D annotations generated from each room's scene graph. See `generator.py` for the layout.
"""

from threedrs.data.synthetic.generator import SynthOutputError, SynthSummary, generate

__all__ = ["SynthOutputError", "SynthSummary", "generate"]
