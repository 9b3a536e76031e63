"""The UniMMAD network; the module tree mirrors the paper's figure (see unimmad.py)."""
