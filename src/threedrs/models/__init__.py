"""Adapters over Hugging Face MLLMs that expose per-frame visual-token grids."""
