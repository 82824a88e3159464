"""3D representation supervision: alignment heads, losses, 3D position encoding, grounding head, AlignTask."""
