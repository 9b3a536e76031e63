"""unimmad-cl: UniMMAD as a continual-learning anomaly-detection platform.

Heavy libraries (torch, timm, avalanche) are imported lazily by the modules that need them,
so that the registry commands of the CLI start fast.
"""

__version__ = "0.1.0"
