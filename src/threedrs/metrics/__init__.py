"""Metrics: the 3D-awareness (multi-view correspondence) score and the five benchmarks' scores."""
