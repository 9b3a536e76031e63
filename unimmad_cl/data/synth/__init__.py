"""Synthetic multi-modal anomaly-detection benchmark (`unimmad-cl synth`)."""

from unimmad_cl.data.synth.benchmark import TASKS, task_entries, write_benchmark

__all__ = ["TASKS", "task_entries", "write_benchmark"]
