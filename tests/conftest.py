"""Shared test set-up: offline, deterministic, small."""

import os

# No test may reach a model hub: timm/huggingface must fail fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")
