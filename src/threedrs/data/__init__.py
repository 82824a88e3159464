"""Scenes on disk (ScanNet posed-image layout), frame sampling, benchmark readers and SynthRooms."""
