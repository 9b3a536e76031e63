"""Data: the modality table, readers for dataset layouts, the torch Dataset, the synthetic benchmark.

Data flows one way: a reader lists `Sample` records (paths only, no pixels, no torch), the
Dataset loads and normalizes them, and `collate` stacks them into a `Batch` for the model.
"""
