"""A task's image-level AUROC per defect type, at chosen stages of a trained workspace: which
defects a stage made the model lose, and whether the good images' scores moved (BENCHMARKS.md
11, "ihc after later stages").

    python -m benchmarks.defect_types --workspace WS --task ihc --stages 2,3

Prints one line per stage: AUROC of good vs all defects, good vs each defect type (with the
count and the median score of that type), and the good images' median score.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np


def defect_type_auroc(labels: list[str], scores: list[float]) -> dict:
    """`labels` "good" or a defect type per image, `scores` the image scores. Returns AUROC of
    good vs every defect and vs each type, and medians."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=float)
    good = np.array([x == "good" for x in labels])
    row = {"all": float(roc_auc_score(~good, s)), "good_median": float(np.median(s[good]))}
    for kind in sorted(set(labels) - {"good"}):
        this = np.array([x == kind for x in labels])
        keep = good | this
        row[kind] = {"auroc": float(roc_auc_score(this[keep], s[keep])), "count": int(this.sum()),
                     "median": float(np.median(s[this]))}
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--stages", required=True, help="comma-separated stage numbers")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    from registry import store
    from unimmad_cl.data.dataset import collate
    from unimmad_cl.training.stages import Context, model_at_stage, task_dataset, task_ids, task_samples
    from unimmad_cl.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    out = {}
    with ws.open_registry() as registry:
        ctx = Context(ws.path, registry, progress=False, echo=lambda m: None)
        task = store.get_task(registry, args.task)
        samples = task_samples(task, "test")
        ids = task_ids(registry)
        for stage in (int(x) for x in args.stages.split(",")):
            model = model_at_stage(ctx, stage).eval()
            data = task_dataset(task, ids[args.task], model, samples)
            scores: list[float] = []
            with torch.no_grad():
                for i in range(0, len(data), 8):
                    batch = collate([data[j] for j in range(i, min(len(data), i + 8))])
                    scores += model.predict(batch.images, batch.modality_mask).scores.tolist()
            out[stage] = defect_type_auroc([s.defect for s in samples], scores)
            print(f"stage {stage}: {json.dumps(out[stage])}", flush=True)
    return out


if __name__ == "__main__":
    main()
