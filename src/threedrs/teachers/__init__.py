"""Frozen teachers whose features supervise the MLLM's visual tokens (VGGT, 2D models, a geometry oracle)."""
