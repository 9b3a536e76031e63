"""Evaluation: metrics (`metrics`), running a model over a test split (`runner`) and
anomaly-map overlays (`heatmaps`).

Nothing is imported here, so that `import unimmad_cl.evaluation.metrics` (used by the
`report` command) pulls in neither torch nor matplotlib.
"""
