"""Continual training: the epoch loop, base/incremental stages, replay buffers, artifacts."""
