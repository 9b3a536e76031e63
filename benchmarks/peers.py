"""Per-class anomalib peers (PatchCore, Reverse Distillation) with this project's backbone weights.

Library module for the benchmarks that put the continual model beside per-class peers
(issues 13 and 14). Every peer here:

- reads an MVTec-AD-layout folder (`<root>/<class>/{train/good, test/<defect>,
  ground_truth/<defect>/<stem>_mask.png}`) through this project's own reader and image
  loader (`unimmad_cl.data.readers.mvtec`, `unimmad_cl.data.images.load_sample`), so it sees
  exactly the pixels the project model sees: RGB in [0, 1], bilinear resize to `image_size`,
  the backbone's mean/std from timm's pretrained config (tf_efficientnet_lite0: 0.5 / 0.5,
  the value `unimmad_cl.model.backbone.backbone_normalization` gives the project model);
  masks nearest-resized to `image_size`;
- is built with `pre_trained=False` (no download) and gets the packaged ImageNet weights
  (`unimmad_cl.model.pretrained.packaged_state_dict`) loaded strictly into its timm feature
  extractor; `verify_packaged_weights` then compares every backbone tensor with the packaged
  file and the result records it (`weights` in `PeerResult.notes`);
- is scored by this project's `unimmad_cl.evaluation.metrics.compute_metrics` on the peer's
  raw anomaly maps and image scores (anomalib's post-processor only rescales them
  monotonically, which changes no AUROC / AUPRO).

PatchCore: anomalib's `PatchcoreModel`, unchanged; layers = lite0 stages 2 and 3 (40 / 112
channels at strides 8 / 16), the lite0 equivalent of wide_resnet50_2's layer2 + layer3
(strides 8 / 16) in anomalib's default; coreset ratio 0.1, 9 neighbours (anomalib defaults);
one pass over the training images (anomalib: `max_epochs=1`), then the k-center-greedy
coreset (`subsample_embedding`, what anomalib's `fit()` calls). That one step is run through
a subclass of anomalib's `KCenterGreedy` that keeps the chosen indices as Python ints: the
same coreset for the same seed (`coreset_matches_anomalib`), but without the stock loop's
memory growth on CPU (glibc fragmentation: +1.4 GB at 20 training images of 128 px, +15 GB at
60, quadratic in the number of patches); `stock_coreset=True` runs the stock loop.

Reverse Distillation: anomalib's `ReverseDistillationModel` cannot take tf_efficientnet_lite0:
its one-class bottleneck (`OCBE`) and de-ResNet decoder (`get_decoder`) hard-code ResNet widths
(64·e / 128·e / 256·e / 512·e) and `get_decoder` raises for any other name. So the bottleneck
and decoder are rebuilt here from the encoder's `feature_info` (widths c1, c2, c3 at strides
4 / 8 / 16), following anomalib's ResNet-18/34 construction block for block: OCBE = conv3x3
c1→c2 stride 2 and conv3x3 c2→c3 stride 2 on stage 1, conv3x3 c2→c3 stride 2 on stage 2,
concatenation with stage 3 (3·c3), then a torchvision `BasicBlock` layer of 2 blocks to 2·c3
at stride 32; decoder = three layers of anomalib's own `DecoderBasicBlock` (2 blocks each,
transposed-conv upsampling) 2·c3 → c3 → c2 → c1. With ResNet-18's widths (64, 128, 256) this
gives exactly anomalib's `OCBE(BasicBlock, 2)` (minus its `conv4`/`bn4`, which its forward
never uses) and `de_resnet18` (checked by `rd_heads_match_resnet18`). Everything else is
anomalib's: its `ReverseDistillationModel.forward`, its loss (`ReverseDistillationLoss`), its
anomaly map (`AnomalyMapGenerator`, mode ADD as in its Lightning module, Gaussian σ = 4), its
optimizer (Adam, lr 0.005, betas (0.5, 0.99) — the original RD4AD code uses (0.5, 0.999);
`betas` is a parameter), batch size 32 (anomalib's datamodule default) and 200 epochs
(anomalib's example config; pass fewer for quick runs).

The training loop is a minimal one of our own, not Lightning's `Engine`: it calls exactly what
anomalib's `training_step` / `configure_optimizers` / `fit` call (model forward, loss, Adam
step; memory bank + coreset), without the Trainer's callbacks, logging, checkpointing and
visualisation, so the seconds measured are the model's, comparable with this project's
training loop. Images are decoded once before timing (decoding is not in any figure).

anomalib's `TimmFeatureExtractor` runs every block of an EfficientNet features model, also
the two stride-32 stages past layer 3 (timm keeps them); `trim_backbone=True` drops them as
this project's `drop_unused_blocks` does (features unchanged, less time). Default False: the
peer as anomalib ships it. `notes` says which.

No anomalib import at module level: `peers_available()` says whether it imports (None) or
why not, so a test or benchmark can skip visibly. Install: `pip install -e ".[peers]"`.

    python -m benchmarks.peers --root DATA --classes a,b --image-size 128 --rd-epochs 200
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# lite0 out_indices -> channels / stride: 1 -> 24 / 4, 2 -> 40 / 8, 3 -> 112 / 16.
PATCHCORE_LAYERS = (2, 3)  # = wide_resnet50_2 layer2 + layer3 (strides 8 and 16)
RD_LAYERS = (1, 2, 3)  # = ResNet layer1..3 (strides 4, 8, 16)
RD_EPOCHS = 200  # anomalib examples/configs/model/reverse_distillation.yaml: max_epochs 200
RD_LR = 0.005
RD_BETAS = (0.5, 0.99)  # anomalib's configure_optimizers (RD4AD's code: (0.5, 0.999))
TRAIN_BATCH_SIZE = 32  # anomalib datamodule default train_batch_size
EVAL_BATCH_SIZE = 32


@dataclass
class PeerResult:
    """One peer model trained and evaluated on one class."""

    method: str  # "patchcore" | "reverse_distillation"
    cls: str
    metrics: dict[str, float]  # compute_metrics keys: i_auroc, p_auroc, aupro, ...
    train_seconds: float  # PatchCore: feature pass + coreset; RD: all epochs
    train_samples_per_s: float  # training images processed per second (x epochs for RD)
    infer_images_per_s: float  # test images through model + anomaly map, per second
    # Peak RSS of the whole process over training and inference (Linux VmHWM). Run the peer
    # in a fresh process (`run_isolated`) for a per-method figure: in a long-lived process the
    # allocator keeps what earlier runs took. notes["memory_train"/"memory_infer"] also give
    # the peak above the RSS just before each phase (model built, images decoded).
    peak_memory_bytes: int | None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- availability


def peers_available() -> str | None:
    """None when anomalib and the packaged backbone weights are importable, else the reason."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import anomalib  # noqa: F401
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: F401
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"anomalib is not importable ({type(exc).__name__}: {exc}); pip install -e '.[peers]'"
    try:
        from unimmad_cl.model.pretrained import packaged_file

        packaged_file(DEFAULT_BACKBONE)
    except Exception as exc:
        return f"packaged weights of {DEFAULT_BACKBONE} unavailable: {exc}"
    return None


def _require_peers() -> None:
    reason = peers_available()
    if reason is not None:
        raise RuntimeError(reason)


# --------------------------------------------------------------------------- data


@dataclass
class ClassData:
    """One class, decoded once: normalized images `[N, 3, S, S]`, labels, masks `[N, S, S]`."""

    train: Any
    test: Any
    labels: Any
    masks: Any


def load_class(root: str | Path, cls: str, image_size: int, normalization, modality: str = "rgb") -> ClassData:
    """Train and test images of one MVTec-layout class through the project's reader/loader
    (`modality` picks the project's decoding: "rgb" colour, "gray" replicated luma, ...)."""
    import numpy as np
    import torch

    from unimmad_cl.data.images import load_sample
    from unimmad_cl.data.readers import mvtec

    def stack(split):
        samples = mvtec.samples(root, [cls], [modality], split)
        loaded = [load_sample(s, image_size, normalization) for s in samples]
        images = torch.from_numpy(np.stack([imgs[0] for imgs, _ in loaded]))
        masks = np.stack([mask > 0.5 for _, mask in loaded])
        return samples, images, masks

    _, train, _ = stack("train")
    test_samples, test, masks = stack("test")
    labels = np.asarray([s.label for s in test_samples], dtype=np.int64)
    return ClassData(train=train, test=test, labels=labels, masks=masks)


def fabricate_mvtec_folder(
    root: str | Path,
    cls: str = "brick",
    n_train: int = 20,
    n_test_good: int = 5,
    n_test_defect: int = 5,
    size: int = 128,
    photo: str = "brick.png",
    patch_photo: str = "coffee.png",
    seed: int = 0,
) -> Path:
    """A small MVTec-layout class from one of scikit-image's bundled photos (for smoke tests).

    Normal samples: random `size`-px crops of the photo (at 1-1.5x its scale), random flips.
    Defects (`test/patch`): a square patch of another photo pasted at a random place (1/8-1/4
    of the side), its mask in `ground_truth/patch/<stem>_mask.png`. Deterministic per seed.
    """
    import numpy as np
    from PIL import Image

    import skimage

    rng = np.random.default_rng(seed)
    data_dir = Path(skimage.__file__).parent / "data"

    def rgb(name):
        with Image.open(data_dir / name) as img:
            return np.asarray(img.convert("RGB"))

    source, foreign = rgb(photo), rgb(patch_photo)

    def crop(img, out):
        h, w = img.shape[:2]
        side = int(min(h, w, out * rng.uniform(1.0, 1.5)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        tile = Image.fromarray(img[y : y + side, x : x + side]).resize((out, out), Image.Resampling.BILINEAR)
        arr = np.asarray(tile)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        if rng.random() < 0.5:
            arr = arr[::-1]
        return np.ascontiguousarray(arr)

    base = Path(root) / cls
    for sub in ("train/good", "test/good", "test/patch", "ground_truth/patch"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(crop(source, size)).save(base / "train/good" / f"{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(crop(source, size)).save(base / "test/good" / f"{i:03d}.png")
    for i in range(n_test_defect):
        img = crop(source, size).copy()
        side = int(rng.integers(size // 8, size // 4 + 1))
        y, x = rng.integers(0, size - side + 1, size=2)
        img[y : y + side, x : x + side] = crop(foreign, side)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[y : y + side, x : x + side] = 255
        Image.fromarray(img).save(base / "test/patch" / f"{i:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/patch" / f"{i:03d}_mask.png")
    return base


# --------------------------------------------------------------------------- backbone weights


def inject_packaged_weights(timm_features, backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """Load the packaged ImageNet weights into a timm `features_only` model (built with
    pretrained=False), strictly: every tensor of the model must come from the package; the
    package's extra tensors may only be the classifier head (conv_head, bn2, classifier)."""
    from unimmad_cl.model.pretrained import packaged_provenance, packaged_state_dict

    state = packaged_state_dict(backbone)
    own = timm_features.state_dict()
    extra = sorted(k for k in state if k not in own)
    head = ("conv_head.", "bn2.", "classifier.")
    if any(not k.startswith(head) for k in extra):
        raise RuntimeError(f"packaged {backbone} has tensors the feature model lacks beyond the head: {extra[:5]}")
    timm_features.load_state_dict({k: state[k] for k in own}, strict=True)
    provenance = packaged_provenance(backbone)
    return {"source": provenance.describe(), "sha256": provenance.sha256, "tensors_loaded": len(own)}


def verify_packaged_weights(timm_features, backbone: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """Compare every tensor of the feature model with a fresh read of the packaged file."""
    import torch

    from unimmad_cl.model.pretrained import packaged_state_dict

    state = packaged_state_dict(backbone)
    own = timm_features.state_dict()
    mismatched = [k for k, v in own.items() if k not in state or not torch.equal(v.cpu(), state[k])]
    return {
        "verified": not mismatched,
        "tensors_compared": len(own),
        "mismatched": mismatched[:5],
        "conv_stem_weight_sum": float(own["conv_stem.weight"].double().sum()) if "conv_stem.weight" in own else None,
    }


def _trim(timm_features) -> int:
    """Drop blocks past the last requested stage (the project's `drop_unused_blocks`); returns
    the number of blocks kept."""
    from unimmad_cl.model.backbone import drop_unused_blocks

    drop_unused_blocks(timm_features)
    return len(timm_features.blocks)


def _normalization(timm_features):
    from unimmad_cl.model.backbone import backbone_normalization

    return backbone_normalization(timm_features)


# --------------------------------------------------------------------------- RD heads for any timm CNN


def build_rd_heads(channels: tuple[int, int, int], blocks: int = 2):
    """(bottleneck, decoder) of Reverse Distillation for an encoder with stage widths
    `channels` = (c1, c2, c3) at strides 4 / 8 / 16, built as anomalib builds them for
    ResNet-18/34 (BasicBlock, `blocks` per layer) with the ResNet widths replaced."""
    import torch
    from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    c1, c2, c3 = channels
    cb = 2 * c3  # ResNet: 512 = 2 x 256

    def conv3x3(cin, cout, stride):
        return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)

    def init(module):
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    class OCBE(nn.Module):
        """anomalib's OCBE with widths from the encoder (its unused conv4/bn4 left out)."""

        def __init__(self):
            super().__init__()
            self.conv1 = conv3x3(c1, c2, 2)
            self.bn1 = nn.BatchNorm2d(c2)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(c2, c3, 2)
            self.bn2 = nn.BatchNorm2d(c3)
            self.conv3 = conv3x3(c2, c3, 2)
            self.bn3 = nn.BatchNorm2d(c3)
            downsample = nn.Sequential(nn.Conv2d(3 * c3, cb, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(cb))
            self.bn_layer = nn.Sequential(
                BasicBlock(3 * c3, cb, 2, downsample), *[BasicBlock(cb, cb) for _ in range(1, blocks)]
            )
            init(self)

        def forward(self, features):
            f0 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(features[0]))))))
            f1 = self.relu(self.bn3(self.conv3(features[1])))
            return self.bn_layer(torch.cat([f0, f1, features[2]], 1)).contiguous()

    class Decoder(nn.Module):
        """anomalib's ResNetDecoder (DecoderBasicBlock) with widths cb -> c3 -> c2 -> c1."""

        def __init__(self):
            super().__init__()
            self.inplanes = cb
            self.layer1 = self._make_layer(c3)
            self.layer2 = self._make_layer(c2)
            self.layer3 = self._make_layer(c1)
            init(self)

        def _make_layer(self, planes):
            upsample = nn.Sequential(
                nn.ConvTranspose2d(self.inplanes, planes, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(planes)
            )
            layers = [DecoderBasicBlock(self.inplanes, planes, 2, upsample)]
            self.inplanes = planes
            layers += [DecoderBasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            a = self.layer1(x)
            b = self.layer2(a)
            c = self.layer3(b)
            return [c, b, a]

    return OCBE(), Decoder()


def rd_heads_match_resnet18() -> bool:
    """The generalized heads with ResNet-18 widths have exactly the parameter shapes of
    anomalib's own resnet18 bottleneck (without its unused conv4/bn4) and decoder."""
    from anomalib.models.components.backbone import get_decoder
    from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer

    ours_b, ours_d = build_rd_heads((64, 128, 256))
    ref_b, ref_d = get_bottleneck_layer("resnet18"), get_decoder("resnet18")

    def shapes(m, skip=()):
        return sorted((k, tuple(v.shape)) for k, v in m.state_dict().items() if not k.startswith(skip))

    return shapes(ours_b) == shapes(ref_b, ("conv4.", "bn4.")) and shapes(ours_d) == shapes(ref_d)


def _rd_model(backbone: str, layers, image_size: int):
    """anomalib's ReverseDistillationModel with an encoder of any timm CNN (pre_trained=False)
    and heads from its feature_info."""
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode, AnomalyMapGenerator
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
    from torch import nn

    class TimmReverseDistillation(ReverseDistillationModel):
        def __init__(self):
            nn.Module.__init__(self)  # the parent's __init__ would call get_decoder(backbone) and fail
            self.tiler = None
            self.encoder = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=list(layers))
            channels = tuple(self.encoder.out_dims)
            if len(channels) != 3:
                raise ValueError(f"Reverse Distillation needs 3 encoder stages, got {channels}")
            self.bottleneck, self.decoder = build_rd_heads(channels)
            self.anomaly_map_generator = AnomalyMapGenerator(
                image_size=(image_size, image_size), mode=AnomalyMapGenerationMode.ADD
            )

    return TimmReverseDistillation()


# --------------------------------------------------------------------------- runs


def _set_threads(threads: int) -> int:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _evaluate(model, data: ClassData, batch_size: int) -> tuple[dict[str, float], float]:
    """Scores and maps of the test set (model in eval mode), metrics by this project's code."""
    import numpy as np
    import torch

    from unimmad_cl.evaluation.metrics import compute_metrics

    model.eval()
    scores, maps = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(data.test), batch_size):
            out = model(data.test[i : i + batch_size])
            scores.append(out.pred_score.reshape(-1).float())
            maps.append(out.anomaly_map.reshape(len(out.pred_score), *out.anomaly_map.shape[-2:]).float())
    seconds = time.perf_counter() - start
    scores_np = torch.cat(scores).numpy().astype(np.float64)
    maps_np = torch.cat(maps).numpy()
    metrics = compute_metrics(data.labels, scores_np, data.masks, maps_np)
    return {k: float(v) for k, v in metrics.items()}, seconds


def _peak(fn):
    from benchmarks.common import peak_memory

    box = {}

    def run():
        box["value"] = fn()

    mem = peak_memory(run)
    return box["value"], mem


def _environment_note(threads: int, load_start: tuple[float, ...]) -> dict[str, Any]:
    import torch

    return {
        "torch_threads": threads,
        "torch": torch.__version__,
        "load_avg_start": list(load_start),
        "load_avg_end": list(os.getloadavg()),
    }


def _coreset_sampler_class():
    """anomalib's KCenterGreedy with the selected indices kept as Python ints.

    Selection is the same code (its `update_distances`, `get_new_idx`, the same random
    projection and random start), so the coreset is identical for the same RNG state
    (`coreset_matches_anomalib` checks it). Stock `select_coreset_idxs` appends a 0-d tensor
    per iteration to a list; on CPU these small long-lived allocations land between the
    loop's n x k temporaries and glibc cannot reuse the freed blocks, so the resident memory
    grows by one temporary per iteration (quadratic in the number of patches): measured here,
    +1.4 GB and 6x the time at 5 120 patches (20 images at 128 px), +15 GB at 15 360 patches
    (60 images), which would exhaust a 23 GB machine at 200 images. No progress bar either."""
    import torch
    from anomalib.models.components import KCenterGreedy

    class IntIndexKCenterGreedy(KCenterGreedy):
        def select_coreset_idxs(self) -> list[int]:
            if self.embedding.ndim == 2:
                self.model.fit(self.embedding)
                self.features = self.model.transform(self.embedding)
            else:
                self.features = self.embedding.reshape(self.embedding.shape[0], -1)
            self.reset_distances()
            idx = torch.randint(high=self.n_observations, size=(1,), device=self.features.device).squeeze()
            selected = [int(idx)]
            for _ in range(self.coreset_size - 1):
                self.update_distances(cluster_center=idx)
                idx = self.get_new_idx()
                self.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
                selected.append(int(idx))
            return selected

    return IntIndexKCenterGreedy


def _seed_all(seed: int) -> None:
    """torch (random start) and numpy's global RNG (anomalib's SparseRandomProjection draws
    its columns with sklearn's sample_without_replacement(random_state=None))."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


def coreset_matches_anomalib(n: int = 600, dim: int = 24, ratio: float = 0.1, seed: int = 0) -> bool:
    """The int-index sampler selects exactly anomalib's coreset for the same seed."""
    import torch
    from anomalib.models.components import KCenterGreedy

    embedding = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    _seed_all(seed)
    stock = KCenterGreedy(embedding=embedding, sampling_ratio=ratio).sample_coreset()
    _seed_all(seed)
    ours = _coreset_sampler_class()(embedding=embedding, sampling_ratio=ratio).sample_coreset()
    return torch.equal(stock, ours)


def run_patchcore(
    root: str | Path,
    cls: str,
    image_size: int = 128,
    backbone: str = DEFAULT_BACKBONE,
    layers: tuple[int, ...] = PATCHCORE_LAYERS,
    coreset_sampling_ratio: float = 0.1,
    num_neighbors: int = 9,
    batch_size: int = TRAIN_BATCH_SIZE,
    seed: int = 0,
    threads: int = 1,
    trim_backbone: bool = False,
    modality: str = "rgb",
    stock_coreset: bool = False,
) -> PeerResult:
    """anomalib PatchCore on one class with the packaged backbone weights.

    The coreset is anomalib's k-center-greedy selection run through `_coreset_sampler_class`
    (same coreset, without the stock loop's quadratic memory growth on CPU);
    `stock_coreset=True` runs anomalib's own `subsample_embedding` instead."""
    _require_peers()
    load_start = os.getloadavg()
    import torch
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    threads = _set_threads(threads)
    torch.manual_seed(seed)
    model = PatchcoreModel(layers=list(layers), backbone=backbone, pre_trained=False, num_neighbors=num_neighbors)
    weights = inject_packaged_weights(model.feature_extractor.feature_extractor, backbone)
    weights.update(verify_packaged_weights(model.feature_extractor.feature_extractor, backbone))
    blocks = _trim(model.feature_extractor.feature_extractor) if trim_backbone else len(
        model.feature_extractor.feature_extractor.blocks
    )
    normalization = _normalization(model.feature_extractor.feature_extractor)
    data = load_class(root, cls, image_size, normalization, modality)

    sampler = _coreset_sampler_class()

    def train():
        model.train()
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(data.train), batch_size):
                model(data.train[i : i + batch_size])
            _seed_all(seed)  # random projection + k-center-greedy's random start
            if stock_coreset:
                model.subsample_embedding(sampling_ratio=coreset_sampling_ratio)
            else:  # subsample_embedding's body with the int-index sampler
                model.memory_bank = torch.vstack(model.embedding_store)
                model.embedding_store.clear()
                model.memory_bank = sampler(embedding=model.memory_bank, sampling_ratio=coreset_sampling_ratio).sample_coreset()
        return time.perf_counter() - start

    train_seconds, train_mem = _peak(train)
    (metrics, infer_seconds), infer_mem = _peak(lambda: _evaluate(model, data, EVAL_BATCH_SIZE))
    return PeerResult(
        method="patchcore",
        cls=cls,
        metrics=metrics,
        train_seconds=train_seconds,
        train_samples_per_s=len(data.train) / train_seconds,
        infer_images_per_s=len(data.test) / infer_seconds,
        peak_memory_bytes=max(train_mem["peak_rss_bytes"], infer_mem["peak_rss_bytes"]),
        notes={
            "anomalib": _anomalib_version(),
            "backbone": backbone,
            "layers": list(layers),
            "layer_channels": list(model.feature_extractor.out_dims),
            "layer_strides": list(model.feature_extractor.reductions),
            "image_size": image_size,
            "modality": modality,
            "normalization": [list(normalization[0]), list(normalization[1])],
            "coreset_sampling_ratio": coreset_sampling_ratio,
            "num_neighbors": num_neighbors,
            "coreset": "anomalib subsample_embedding" if stock_coreset else "anomalib KCenterGreedy, int indices",
            "memory_bank": list(model.memory_bank.shape),
            "train_images": len(data.train),
            "test_images": len(data.test),
            "batch_size": batch_size,
            "encoder_blocks_run": blocks,
            "trim_backbone": trim_backbone,
            "weights": weights,
            "memory_train": train_mem,
            "memory_infer": infer_mem,
            "infer_seconds": infer_seconds,
            "seed": seed,
            **_environment_note(threads, load_start),
        },
    )


def run_reverse_distillation(
    root: str | Path,
    cls: str,
    image_size: int = 128,
    epochs: int = RD_EPOCHS,
    backbone: str = DEFAULT_BACKBONE,
    layers: tuple[int, ...] = RD_LAYERS,
    batch_size: int = TRAIN_BATCH_SIZE,
    lr: float = RD_LR,
    betas: tuple[float, float] = RD_BETAS,
    seed: int = 0,
    threads: int = 1,
    trim_backbone: bool = False,
    modality: str = "rgb",
) -> PeerResult:
    """anomalib Reverse Distillation (heads built for the timm encoder, see the module doc) on
    one class with the packaged backbone weights."""
    _require_peers()
    load_start = os.getloadavg()
    import torch
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

    threads = _set_threads(threads)
    torch.manual_seed(seed)
    model = _rd_model(backbone, layers, image_size)
    encoder = model.encoder.feature_extractor
    weights = inject_packaged_weights(encoder, backbone)
    blocks = _trim(encoder) if trim_backbone else len(encoder.blocks)
    normalization = _normalization(encoder)
    data = load_class(root, cls, image_size, normalization, modality)
    loss_fn = ReverseDistillationLoss()
    # anomalib's configure_optimizers: decoder + bottleneck only (the encoder is frozen)
    optimizer = torch.optim.Adam(
        list(model.decoder.parameters()) + list(model.bottleneck.parameters()), lr=lr, betas=tuple(betas)
    )
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []

    def train():
        model.train()  # forward() puts the encoder back in eval mode itself
        start = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(data.train), generator=generator)
            total, count = 0.0, 0
            for i in range(0, len(order), batch_size):
                batch = data.train[order[i : i + batch_size]]
                loss = loss_fn(*model(batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach().item() * len(batch)
                count += len(batch)
            losses.append(total / count)
        return time.perf_counter() - start

    train_seconds, train_mem = _peak(train)
    (metrics, infer_seconds), infer_mem = _peak(lambda: _evaluate(model, data, EVAL_BATCH_SIZE))
    # after training: the encoder must still hold exactly the packaged weights (frozen)
    weights.update(verify_packaged_weights(encoder, backbone))
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return PeerResult(
        method="reverse_distillation",
        cls=cls,
        metrics=metrics,
        train_seconds=train_seconds,
        train_samples_per_s=len(data.train) * epochs / train_seconds,
        infer_images_per_s=len(data.test) / infer_seconds,
        peak_memory_bytes=max(train_mem["peak_rss_bytes"], infer_mem["peak_rss_bytes"]),
        notes={
            "anomalib": _anomalib_version(),
            "backbone": backbone,
            "layers": list(layers),
            "layer_channels": list(model.encoder.out_dims),
            "layer_strides": list(model.encoder.reductions),
            "heads": "OCBE + de-ResNet decoder rebuilt from the encoder's feature_info (BasicBlock x2 per layer, "
            "bottleneck width 2*c3); anomalib's get_decoder/get_bottleneck_layer only know ResNets",
            "bottleneck_params": params(model.bottleneck),
            "decoder_params": params(model.decoder),
            "image_size": image_size,
            "modality": modality,
            "normalization": [list(normalization[0]), list(normalization[1])],
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": {"name": "Adam", "lr": lr, "betas": list(betas)},
            "anomaly_map_mode": "add",
            "loss_first_last": [losses[0], losses[-1]] if losses else None,
            "train_images": len(data.train),
            "test_images": len(data.test),
            "encoder_blocks_run": blocks,
            "trim_backbone": trim_backbone,
            "weights": weights,
            "memory_train": train_mem,
            "memory_infer": infer_mem,
            "infer_seconds": infer_seconds,
            "seed": seed,
            **_environment_note(threads, load_start),
        },
    )


def _anomalib_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("anomalib")
    except Exception:
        return None


# --------------------------------------------------------------------------- isolation


def _runners():
    return {"patchcore": run_patchcore, "reverse_distillation": run_reverse_distillation}


def run_isolated(method: str, root: str | Path, cls: str, timeout: float = 3600, **kwargs) -> PeerResult:
    """`run_patchcore` / `run_reverse_distillation` in a fresh Python process, so that its
    peak memory is its own (not the allocator caches of earlier runs) and anomalib's imports
    stay out of the caller. kwargs must be JSON-serializable; returns the same PeerResult."""
    import json
    import subprocess
    import sys

    if method not in _runners():
        raise ValueError(f"unknown peer method {method!r}; known: {', '.join(_runners())}")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    spec = {"method": method, "root": str(root), "cls": cls, "kwargs": kwargs}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", "--probe", json.dumps(spec)],
        capture_output=True, text=True, cwd=repo, env=env, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"peer {method} on {cls} failed in its subprocess:\n{out.stderr[-3000:]}")
    return PeerResult(**json.loads(out.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    import json

    from benchmarks import common

    parser = argparse.ArgumentParser(description="anomalib PatchCore / Reverse Distillation per class, packaged weights")
    parser.add_argument("--root", type=Path, help="MVTec-layout folder")
    parser.add_argument("--classes", help="comma-separated class folders")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rd-epochs", type=int, default=RD_EPOCHS)
    parser.add_argument("--methods", default="patchcore,reverse_distillation")
    parser.add_argument("--trim-backbone", action="store_true", help="drop the unused stride-32 blocks")
    parser.add_argument("--stock-coreset", action="store_true",
                        help="PatchCore: anomalib's own coreset loop (memory grows quadratically on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="run every peer in this process (default: a fresh one each)")
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # run_isolated's child: one run, JSON on stdout
    args = parser.parse_args(argv)
    if args.probe:
        spec = json.loads(args.probe)
        result = _runners()[spec["method"]](spec["root"], spec["cls"], **spec["kwargs"])
        print(json.dumps(result.to_dict(), default=float))
        return 0
    if args.root is None or args.classes is None:
        parser.error("--root and --classes are required")
    reason = peers_available()
    if reason:
        print(f"peers unavailable: {reason}")
        return 2
    threads = common.set_threads(args.threads)
    env = common.environment({"image_size": args.image_size, "isolated": not args.in_process})
    results = []
    for cls in args.classes.split(","):
        for method in args.methods.split(","):
            kwargs = {"image_size": args.image_size, "seed": args.seed, "threads": threads,
                      "trim_backbone": args.trim_backbone}
            if method == "reverse_distillation":
                kwargs["epochs"] = args.rd_epochs
            elif method == "patchcore":
                kwargs["stock_coreset"] = args.stock_coreset
            else:
                parser.error(f"unknown method {method!r}")
            if args.in_process:
                r = _runners()[method](args.root, cls, **kwargs)
            else:
                r = run_isolated(method, args.root, cls, **kwargs)
            m = r.metrics
            print(
                f"{method:22s} {cls:12s} I-AUROC {m['i_auroc']:.3f} P-AUROC {m['p_auroc']:.3f} AUPRO {m['aupro']:.3f} "
                f"train {r.train_seconds:.1f}s ({r.train_samples_per_s:.1f} samples/s) "
                f"infer {r.infer_images_per_s:.1f} img/s peak RSS {common.mib(r.peak_memory_bytes)} "
                f"(train +{common.mib(r.notes['memory_train']['peak_extra_bytes'])}) "
                f"weights verified {r.notes['weights']['verified']} load {r.notes['load_avg_start'][0]:.1f}-{r.notes['load_avg_end'][0]:.1f}",
                flush=True,
            )
            results.append(r.to_dict())
    out = {"environment": common.finish_environment(env), "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
