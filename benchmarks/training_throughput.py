"""Training throughput (issue 14, item 3): the trunk optimizations before/after, a profile of
the base step, the optimizer, data loading (decoded-image cache, workers), torch.compile, and
anomalib's Reverse Distillation beside this project on the same class, weights and image size.

    python -m benchmarks.training_throughput             # lite preset, 128 px, RD peer
    python -m benchmarks.training_throughput --quick     # tiny preset, 64 px, no peer (smoke)
    python -m benchmarks.training_throughput --compile   # also torch.compile (minutes of compiling)

Everything compared is timed interleaved in this process (A B A B ...), one torch thread by
default; medians (min in the JSON).

- `trunk`: the shipped trunk against the trunk before this change, same weights, same
  batches. "before" is the shipped code with the change undone in place
  (`before_trunk_optimizations`): depthwise 1x1 as a conv. (BatchNorm folding in inference
  and channels_last activations were tried and dropped: they moved a torchrun step's
  parameters by 1.7e-3 against a single process, where the contract is 1e-6.)
  Workloads: a base step (forward, loss, backward, Adam, `.item()`: what `train_epochs` does),
  an incremental step with the full forward (frozen trunk), the trunk's features in eval mode
  (what the training feature cache and the evaluation cache compute) and `predict`. The same
  numbers come out of both (checked first, from the same weights).
- `profile`: where a base step's time goes: parts timed forward + backward alone, and
  torch.profiler's top ops.
- `optimizer`: Adam as `stages.run_stage` builds it (torch's default on the CPU: a Python loop
  over the parameters) against `foreach=True` and `fused=True`, same gradients.
- `data`: an epoch of `train_epochs` over `make_loader` on MVTec-sized photographs
  (`synth --kind photos --image-size 1024`, decoded and resized to the model's size), with the
  decoded-image cache (shipped, warm after the first epoch) and without it (before), and with
  one DataLoader worker; decoding alone.
- `compile` (`--compile`): `torch.compile` of the embedding, general encoder and prior
  extractor: compile time and step time against eager.
- `peer` (anomalib installed): Reverse Distillation (benchmarks/peers.py: anomalib's model,
  loss and anomaly map, heads rebuilt for tf_efficientnet_lite0, the same packaged weights,
  its Adam and batch 32) against this project's base stage on one `synth --kind photos` class
  at 128 px. Training: one epoch of each, interleaved (RD's loop is peers.py's; ours is
  `train_epochs` over `make_loader`, images from the warm decoded-image cache, RD's decoded
  once up front: neither pays decoding); inference: the test set through `UniMMAD.predict`
  (batch 16, the evaluation batch) and through RD's forward in eval mode (batch 32, peers.py's).
  Peak memory of each, in a fresh process. Forward FLOPs per image of both (torch's
  FlopCounterMode) say how much work each does.

Writes benchmarks/results/training_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import common

PEER_CLASS = "brick"


# --------------------------------------------------------------------------- before / after


def _old_depthwise_forward(self, x):
    return self.act(self.norm(self.pointwise(self.depthwise(x))))


@contextlib.contextmanager
def before_trunk_optimizations():
    """The trunk as it was before this change: depthwise 1x1 convolutions run as convolutions."""
    from unimmad_cl.model import fcm

    saved = fcm.DepthwiseSeparable.forward
    fcm.DepthwiseSeparable.forward = _old_depthwise_forward
    try:
        yield
    finally:
        fcm.DepthwiseSeparable.forward = saved


def _variant(name: str):
    return before_trunk_optimizations() if name == "before" else contextlib.nullcontext()


def build_model(preset: str):
    from unimmad_cl.config import ModelConfig
    from unimmad_cl.model.unimmad import UniMMAD

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UniMMAD(ModelConfig.preset(preset))


def make_batch(config, batch: int, seed: int = 0, modalities: int = 2):
    """Random images; every other sample has a second modality when `modalities` is 2."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, config.max_modalities, 3, config.image_size, config.image_size, generator=g)
    mask = torch.zeros(batch, config.max_modalities, dtype=torch.bool)
    mask[:, 0] = True
    if modalities > 1:
        mask[::2, 1] = True
    return images * mask[:, :, None, None, None], mask, torch.ones(batch)


def train_step(model, opt, batch) -> float:
    images, mask, weight = batch
    out = model(images, mask)
    losses = model.loss(out, weight, 0, 10)
    opt.zero_grad(set_to_none=True)
    losses.total.backward()
    opt.step()
    return losses.total.item() + losses.consistency.item() + losses.load_balance.item()


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.double() - y.double()).norm() / max(float(x.double().norm()), 1e-30)) for x, y in zip(a, b))


def equality(model, train_batch, eval_batch) -> dict:
    """before vs after from the same weights: loss and gradients of a base step (bitwise?),
    trunk features and predict maps in eval mode."""
    from unimmad_cl.model.unimmad import freeze_for_incremental

    out = {}
    grads, losses = {}, {}
    for name in ("before", "after"):
        m = copy.deepcopy(model).train()
        with _variant(name):
            o = m(train_batch[0], train_batch[1])
            loss = m.loss(o, train_batch[2], 0, 10).total
            loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    big = [n for n, g in grads["before"].items() if float(g.norm()) > 1e-5]
    out["base_step_loss_abs_diff"] = abs(losses["before"] - losses["after"])
    out["base_step_grads_bitwise_equal"] = all(torch.equal(grads["before"][n], grads["after"][n]) for n in grads["before"])
    out["base_step_grad_max_rel_diff"] = _max_rel([grads["before"][n] for n in big], [grads["after"][n] for n in big])
    inc = copy.deepcopy(model)
    freeze_for_incremental(inc)
    inc.train()
    vals = {}
    for name in ("before", "after"):
        with _variant(name):
            o = inc(train_batch[0], train_batch[1])
        vals[name] = o.decoded
    out["incremental_forward_decoded_max_rel_diff"] = _max_rel(vals["before"], vals["after"])
    ev = copy.deepcopy(model).eval()
    feats, maps = {}, {}
    for name in ("before", "after"):
        with _variant(name), torch.no_grad():
            f = ev.trunk(eval_batch[0], eval_batch[1])
            feats[name] = f.general + f.priors
            maps[name] = ev.predict(eval_batch[0], eval_batch[1])
    out["trunk_features_max_rel_diff"] = _max_rel(feats["before"], feats["after"])
    out["predict_maps_max_abs_diff"] = float((maps["before"].maps - maps["after"].maps).abs().max())
    out["predict_scores_max_abs_diff"] = float((maps["before"].scores - maps["after"].scores).abs().max())
    out["predict_leader_counts_equal"] = bool(torch.equal(maps["before"].leader_counts, maps["after"].leader_counts))
    return out


def trunk_section(preset: str, train_batch: int, eval_batch: int, repeats: int) -> dict:
    from unimmad_cl.model.unimmad import freeze_for_incremental

    base = build_model(preset)
    cfg = base.config
    tb, eb = make_batch(cfg, train_batch), make_batch(cfg, eval_batch, seed=1)
    result = {"preset": preset, "image_size": cfg.image_size, "train_batch": train_batch, "eval_batch": eval_batch,
              "equality": equality(base, tb, eb)}
    models = {}
    for name in ("before", "after"):
        m = copy.deepcopy(base).train()
        inc = copy.deepcopy(base)
        freeze_for_incremental(inc)
        inc.train()
        ev = copy.deepcopy(base).eval()
        models[name] = {
            "base": (m, torch.optim.Adam(m.parameters(), lr=1e-4)),
            "inc": (inc, torch.optim.Adam([p for p in inc.parameters() if p.requires_grad], lr=1e-4)),
            "eval": ev,
        }

    def run(name, kind):
        with _variant(name):
            if kind == "base_step":
                return train_step(*models[name]["base"], tb)
            if kind == "incremental_step_full_forward":
                return train_step(*models[name]["inc"], tb)
            with torch.no_grad():
                ev = models[name]["eval"]
                if kind == "trunk_features_eval":
                    return ev.trunk(eb[0], eb[1])
                return ev.predict(eb[0], eb[1])

    kinds = ("base_step", "incremental_step_full_forward", "trunk_features_eval", "predict")
    fns = {f"{k}/{v}": (lambda k=k, v=v: run(v, k)) for k in kinds for v in ("before", "after")}
    times = common.interleaved(fns, repeats, warmup=1)
    rows = {}
    for k in kinds:
        n = train_batch if "step" in k else eval_batch
        unit = "samples_per_s" if "step" in k else "images_per_s"
        row = {v: {**common.stats(times[f"{k}/{v}"]), unit: n / statistics.median(times[f"{k}/{v}"])} for v in ("before", "after")}
        row["speedup"] = common.ratio(times, f"{k}/before", f"{k}/after")
        row["speedup_min"] = common.min_ratio(times, f"{k}/before", f"{k}/after")
        rows[k] = row
    result["workloads"] = rows
    return result


# --------------------------------------------------------------------------- profile


def profile_section(preset: str, batch: int, repeats: int) -> dict:
    """Parts of a base step timed alone (forward + backward of each), and the top ops."""
    from unimmad_cl.model.backbone import stage_features
    from unimmad_cl.model.unimmad import Features

    model = build_model(preset).train()
    cfg = model.config
    images, mask, weight = make_batch(cfg, batch)
    x = images.flatten(1, 2)
    with torch.no_grad():
        e = model.embedding(x)
        f = stage_features(model.encoder.backbone(e))
        z = model.encoder.fcm(f)
        feats = model.trunk(images, mask)

    def fb(fn, inputs):
        def go():
            out = fn(*inputs)
            out = [out] if isinstance(out, torch.Tensor) else out
            sum(o.sum() for o in out).backward()
        return go

    req = lambda t: t.detach().requires_grad_()  # noqa: E731

    def cmoe():
        fr = Features([req(g) for g in feats.general], feats.priors, feats.sample_index, feats.batch_size)
        model.loss(model.decode(fr), weight, 0, 10).total.backward()

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    parts = {
        "embedding (stem)": fb(model.embedding, [x]),
        "encoder backbone": fb(lambda t: stage_features(model.encoder.backbone(t)), [req(e)]),
        "fcm": fb(model.encoder.fcm, [[req(t) for t in f]]),
        "decoder": fb(model.encoder.decoder, [req(z)]),
        "prior generator (no grad)": lambda: model.prior(images[mask]),
        "c-moe + loss": cmoe,
        "whole step": lambda: train_step(model, opt, (images, mask, weight)),
    }
    times = common.interleaved(parts, repeats, warmup=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    whole = med.pop("whole step")
    parts_sum = sum(med.values())
    with torch.profiler.profile() as prof:
        train_step(model, opt, (images, mask, weight))
    table = sorted(prof.key_averages(), key=lambda ev: ev.self_cpu_time_total, reverse=True)
    total = sum(ev.self_cpu_time_total for ev in table) or 1
    return {
        "preset": preset, "batch": batch,
        "whole_step_median_s": whole,
        "parts_median_s": med,
        "parts_share_of_their_sum": {k: v / parts_sum for k, v in med.items()},
        "outside_cmoe_share": 1 - med["c-moe + loss"] / parts_sum,
        "top_ops": [
            {"op": ev.key, "self_ms": ev.self_cpu_time_total / 1000, "share": ev.self_cpu_time_total / total, "calls": ev.count}
            for ev in table[:15]
        ],
    }


# --------------------------------------------------------------------------- optimizer


def optimizer_section(preset: str, batch: int, repeats: int) -> dict:
    model = build_model(preset).train()
    images, mask, weight = make_batch(model.config, batch)
    model.loss(model(images, mask), weight, 0, 10).total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    variants = {"default (for-loop)": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    copies = {}
    for name, kwargs in variants.items():
        m = copy.deepcopy(model)
        params = [p for n, p in m.named_parameters() if n in grads]
        for n, p in m.named_parameters():
            if n in grads:
                p.grad = grads[n].clone()
        copies[name] = (m, torch.optim.Adam(params, lr=1e-4, **kwargs))
    firsts = {}
    for name, (m, opt) in copies.items():
        opt.step()
        firsts[name] = {n: p.detach().clone() for n, p in m.named_parameters()}
    ref = firsts["default (for-loop)"]
    diffs = {name: max(float((ref[n] - v[n]).abs().max()) for n in ref) for name, v in firsts.items()}
    times = common.interleaved({name: opt.step for name, (m, opt) in copies.items()}, repeats, warmup=1)
    return {
        "preset": preset,
        "parameters": len(grads),
        "elements": sum(g.numel() for g in grads.values()),
        "step": {name: common.stats(t) for name, t in times.items()},
        "speedup_vs_default": {name: common.ratio(times, "default (for-loop)", name) for name in variants},
        "max_abs_param_diff_after_one_step": diffs,
    }


# --------------------------------------------------------------------------- data


def _synth(out: Path, tasks: list[str], train: int, test: int, size: int) -> None:
    from click.testing import CliRunner

    from cli import main as cli

    args = ["synth", "--kind", "photos", "--out", str(out), "--train", str(train), "--test", str(test),
            "--image-size", str(size)]
    for t in tasks:
        args += ["--task", t]
    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        raise RuntimeError(f"synth failed: {result.output}")


def _photo_dataset(root: Path, classes: list[str], image_size: int, normalization):
    from unimmad_cl.data.dataset import MultiTaskDataset, TaskDataset
    from unimmad_cl.data.readers import mvtec

    return MultiTaskDataset([
        TaskDataset(mvtec.samples(root / "mvtec", [c], ["rgb"], "train"), image_size, task_id=i, normalization=normalization)
        for i, c in enumerate(classes)
    ])


def data_section(preset: str, tmp: Path, file_size: int, train: int, repeats: int) -> dict:
    from torch.utils.data import DataLoader

    from unimmad_cl.config import TrainConfig
    from unimmad_cl.data.dataset import collate
    from unimmad_cl.training.loop import drop_last, make_loader, make_sampler, train_epochs

    classes = ["brick", "coffee"]
    root = tmp / f"photos{file_size}"
    _synth(root, classes, train, 4, file_size)
    model = build_model(preset).train()
    size = model.config.image_size
    config = TrainConfig.preset(preset).with_overrides(epochs=1, device="cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def plain_loader(dataset, workers=0):  # make_loader before this change
        sampler = make_sampler(dataset, config)
        return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=workers, drop_last=drop_last(sampler, config))

    uncached = _photo_dataset(root, classes, size, model.normalization)
    cached = _photo_dataset(root, classes, size, model.normalization)
    cached_loader = make_loader(cached, config)
    w1 = _photo_dataset(root, classes, size, model.normalization)
    w1_loader = make_loader(w1, config.with_overrides(num_workers=1))
    for _ in range(3):  # fill the caches (draws with replacement: a few epochs see every sample)
        for loader in (cached_loader, w1_loader):
            for _batch in loader:
                pass

    def epoch(loader):
        train_epochs(model, loader, opt, config, torch.device("cpu"), progress=False)

    def iterate(loader):
        for _batch in loader:
            pass

    fns = {
        "epoch, no image cache (before)": lambda: epoch(plain_loader(uncached)),
        "epoch, image cache warm (shipped)": lambda: epoch(cached_loader),
        "epoch, no cache, 1 worker": lambda: epoch(plain_loader(uncached, 1)),
        "epoch, cache, 1 persistent worker": lambda: epoch(w1_loader),
        "decoding alone (an epoch's draws)": lambda: iterate(plain_loader(uncached)),
        "from the warm cache alone": lambda: iterate(cached_loader),
    }
    times = common.interleaved(fns, repeats, warmup=0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "preset": preset, "file_size": file_size, "model_image_size": size, "samples": len(uncached),
        "draws_per_epoch": len(make_sampler(uncached, config)), "batch": config.batch_size,
        "timings": {k: common.stats(v) for k, v in times.items()},
        "decode_share_of_uncached_epoch": med["decoding alone (an epoch's draws)"] / med["epoch, no image cache (before)"],
        "cached_vs_uncached_epoch": med["epoch, image cache warm (shipped)"] / med["epoch, no image cache (before)"],
        "one_worker_vs_none_uncached": med["epoch, no cache, 1 worker"] / med["epoch, no image cache (before)"],
        "cache_bytes": cached.image_cache.used_bytes,
        "cache_items": len(cached.image_cache),
    }


# --------------------------------------------------------------------------- compile


def compile_section(preset: str, batch: int, repeats: int) -> dict:
    base = build_model(preset)
    tb = make_batch(base.config, batch)
    eager = copy.deepcopy(base).train()
    compiled = copy.deepcopy(base).train()
    compiled.embedding = torch.compile(compiled.embedding)
    compiled.encoder = torch.compile(compiled.encoder)
    compiled.prior.extractor = torch.compile(compiled.prior.extractor)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in (("eager", eager), ("compiled", compiled))}
    start = time.perf_counter()
    first = train_step(compiled, opts["compiled"], tb)
    compile_s = time.perf_counter() - start
    reference = train_step(eager, opts["eager"], tb)
    times = common.interleaved({"eager": lambda: train_step(eager, opts["eager"], tb),
                                "compiled": lambda: train_step(compiled, opts["compiled"], tb)}, repeats, warmup=1)
    saved = statistics.median(times["eager"]) - statistics.median(times["compiled"])
    return {
        "preset": preset, "batch": batch, "compile_and_first_step_s": compile_s,
        "first_step_losses": {"compiled": first, "eager": reference},
        "step": {k: common.stats(v) for k, v in times.items()},
        "speedup": common.ratio(times, "eager", "compiled"),
        "steps_to_repay_compile": compile_s / saved if saved > 0 else None,
    }


# --------------------------------------------------------------------------- peer


def forward_flops(fn) -> int:
    """Floating-point operations of one call, torch's FlopCounterMode (matrix products and
    convolutions, functional ones included; forward only: its formulas for the backward of
    grouped convolutions overcount)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


class PeerSetup:
    """Both models and the class's data (this process)."""

    def __init__(self, root: Path, preset: str, rd_epochs_batch: int, trim: bool = False):
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

        from benchmarks import peers
        from unimmad_cl.config import TrainConfig
        from unimmad_cl.data.dataset import MultiTaskDataset, TaskDataset
        from unimmad_cl.data.readers import mvtec
        from unimmad_cl.training.loop import make_loader

        self.ours = build_model(preset)
        size = self.ours.config.image_size
        self.config = TrainConfig.preset(preset).with_overrides(epochs=1, device="cpu")
        samples = mvtec.samples(root / "mvtec", [PEER_CLASS], ["rgb"], "train")
        self.dataset = MultiTaskDataset([TaskDataset(samples, size, normalization=self.ours.normalization)])
        self.loaders = {b: make_loader(self.dataset, self.config.with_overrides(batch_size=b)) for b in (self.config.batch_size, 32)}
        for _ in range(3):  # warm the decoded-image cache (shared by both loaders)
            for _batch in self.loaders[self.config.batch_size]:
                pass
        self.opt = torch.optim.Adam(self.ours.parameters(), lr=self.config.lr)
        torch.manual_seed(0)
        self.rd = peers._rd_model(peers.DEFAULT_BACKBONE, peers.RD_LAYERS, size)
        encoder = self.rd.encoder.feature_extractor
        self.weights = peers.inject_packaged_weights(encoder, peers.DEFAULT_BACKBONE)
        if trim:
            peers._trim(encoder)
        self.data = peers.load_class(root / "mvtec", PEER_CLASS, size, peers._normalization(encoder))
        self.rd_loss = ReverseDistillationLoss()
        self.rd_opt = torch.optim.Adam(list(self.rd.decoder.parameters()) + list(self.rd.bottleneck.parameters()),
                                       lr=peers.RD_LR, betas=peers.RD_BETAS)
        self.rd_batch = rd_epochs_batch
        self.generator = torch.Generator().manual_seed(0)
        # our test set as the model takes it (decoded once, like RD's)
        test = mvtec.samples(root / "mvtec", [PEER_CLASS], ["rgb"], "test")
        from unimmad_cl.data.dataset import collate

        tds = TaskDataset(test, size, normalization=self.ours.normalization)
        self.test_batch = collate([tds[i] for i in range(len(tds))])

    def our_epoch(self, batch: int) -> None:
        from unimmad_cl.training.loop import train_epochs

        train_epochs(self.ours, self.loaders[batch], self.opt, self.config.with_overrides(batch_size=batch),
                     torch.device("cpu"), progress=False)

    def rd_epoch(self) -> None:
        """peers.run_reverse_distillation's epoch: forward, anomalib's loss, Adam, `.item()`."""
        self.rd.train()
        order = torch.randperm(len(self.data.train), generator=self.generator)
        for i in range(0, len(order), self.rd_batch):
            batch = self.data.train[order[i : i + self.rd_batch]]
            loss = self.rd_loss(*self.rd(batch))
            self.rd_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.rd_opt.step()
            loss.detach().item()

    def our_inference(self, batch: int = 16) -> None:
        self.ours.eval()
        b = self.test_batch
        for i in range(0, len(b), batch):
            self.ours.predict(b.images[i : i + batch], b.modality_mask[i : i + batch])

    def rd_inference(self, batch: int = 32) -> None:
        self.rd.eval()
        with torch.no_grad():
            for i in range(0, len(self.data.test), batch):
                self.rd(self.data.test[i : i + batch])


def peer_probe(spec: dict) -> dict:
    def setup():
        return PeerSetup(Path(spec["root"]), spec["preset"], 32, trim=spec.get("trim", False))

    def work(s):
        kind = spec["kind"]
        if kind == "ours_train":
            s.our_epoch(s.config.batch_size)
        elif kind == "ours_infer":
            s.our_inference()
        elif kind == "rd_train":
            s.rd_epoch()
        else:
            s.rd_inference()

    return common.fresh_peak(setup, work)


def peer_section(preset: str, tmp: Path, train: int, test: int, repeats: int, memory: bool) -> dict:
    from benchmarks import peers

    root = tmp / "peer"
    _synth(root, [PEER_CLASS], train, test, 256)
    s = PeerSetup(root, preset, peers.TRAIN_BATCH_SIZE)
    trimmed = PeerSetup(root, preset, peers.TRAIN_BATCH_SIZE, trim=True)
    ours_b = s.config.batch_size
    fns = {
        f"ours train epoch (batch {ours_b})": lambda: s.our_epoch(ours_b),
        "ours train epoch (batch 32)": lambda: s.our_epoch(32),
        "rd train epoch (batch 32)": s.rd_epoch,
        "rd train epoch, trimmed encoder (batch 32)": trimmed.rd_epoch,
        "ours predict (batch 16)": s.our_inference,
        "rd inference (batch 32)": s.rd_inference,
        "rd inference, trimmed encoder (batch 32)": trimmed.rd_inference,
    }
    times = common.interleaved(fns, repeats, warmup=1)
    n_train, n_test = len(s.data.train), len(s.data.test)
    draws = len(s.loaders[ours_b].sampler)
    rows = {}
    for name, t in times.items():
        row = common.stats(t)
        if "train" in name:
            n = draws if name.startswith("ours") else n_train
            row["samples_per_s"] = n / row["median_s"]
        else:
            row["images_per_s"] = n_test / row["median_s"]
        rows[name] = row
    x = s.test_batch
    s.ours.eval()
    s.rd.eval()
    flops = {
        "ours_predict_per_image": forward_flops(lambda: s.ours.predict(x.images[:4], x.modality_mask[:4])) / 4,
        "rd_inference_per_image": forward_flops(lambda: s.rd(s.data.test[:4])) / 4,
    }
    flops["ours_over_rd"] = flops["ours_predict_per_image"] / flops["rd_inference_per_image"]
    # Where our forward's operations go (per image, the parts of `trunk` and `decode`).
    from unimmad_cl.model.backbone import stage_features

    images, mask = x.images[:4], x.modality_mask[:4]
    with torch.no_grad():
        e = s.ours.embedding(images.flatten(1, 2))
        f = stage_features(s.ours.encoder.backbone(e))
        z = s.ours.encoder.fcm(f)
        features = s.ours.trunk(images, mask)
    flops["ours_parts_per_image"] = {
        name: forward_flops(fn) / 4 for name, fn in {
            "embedding (stem)": lambda: s.ours.embedding(images.flatten(1, 2)),
            "encoder backbone": lambda: s.ours.encoder.backbone(e),
            "fcm": lambda: s.ours.encoder.fcm(f),
            "decoder": lambda: s.ours.encoder.decoder(z),
            "prior generator": lambda: s.ours.prior(images[mask]),
            "c-moe (decode)": lambda: s.ours.decode(features),
        }.items()
    }
    result = {
        "class": PEER_CLASS, "image_size": s.ours.config.image_size, "train_images": n_train, "test_images": n_test,
        "ours_draws_per_epoch": draws, "weights": s.weights, "timings": rows,
        "train_ours_over_rd": rows[f"ours train epoch (batch {ours_b})"]["samples_per_s"] / rows["rd train epoch (batch 32)"]["samples_per_s"],
        "train_ours_batch32_over_rd": rows["ours train epoch (batch 32)"]["samples_per_s"] / rows["rd train epoch (batch 32)"]["samples_per_s"],
        "inference_ours_over_rd": rows["ours predict (batch 16)"]["images_per_s"] / rows["rd inference (batch 32)"]["images_per_s"],
        "forward_flops": flops,
    }
    if memory:
        spec = {"root": str(root), "preset": preset}
        result["memory"] = {
            kind: common.probe_in_subprocess("benchmarks.training_throughput", {**spec, "kind": kind}, torch.get_num_threads())
            for kind in ("ours_train", "ours_infer", "rd_train", "rd_infer")
        }
    return result


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.common_args(parser)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes)")
    parser.add_argument("--no-peer", action="store_true", help="skip the Reverse Distillation comparison")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probes")
    parser.add_argument("--only", help="comma-separated sections: trunk,profile,optimizer,data,compile,peer")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: memory of one peer workload
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    if args.probe:
        print(json.dumps(peer_probe(json.loads(args.probe))))
        return {}
    env = common.environment()
    preset = "tiny" if args.quick else "lite"
    repeats = args.repeats or (2 if args.quick else 7)
    from unimmad_cl.config import TrainConfig

    batch = TrainConfig.preset(preset).batch_size
    sections = set((args.only or "trunk,profile,optimizer,data,compile,peer").split(","))
    if not args.compile:
        sections.discard("compile")
    if args.no_peer or args.quick:
        sections.discard("peer")
    if "peer" in sections:
        from benchmarks import peers

        reason = peers.peers_available()
        if reason is not None:
            print(f"peer comparison skipped: {reason}")
            sections.discard("peer")
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="training_throughput_") as tmp:
        tmp = Path(tmp)
        if "trunk" in sections:
            out["trunk"] = trunk_section(preset, batch, 16, repeats)
            for k, row in out["trunk"]["workloads"].items():
                unit = "samples_per_s" if "step" in k else "images_per_s"
                print(f"trunk {k}: before {row['before'][unit]:.2f}, after {row['after'][unit]:.2f} {unit} ({row['speedup']:.2f}x)")
            print(f"  same results: {out['trunk']['equality']}")
        if "profile" in sections:
            out["profile"] = profile_section(preset, batch, repeats)
            print(f"profile: outside the C-MoE {out['profile']['outside_cmoe_share']:.0%} of a base step's parts")
        if "optimizer" in sections:
            out["optimizer"] = optimizer_section(preset, batch, repeats)
            print(f"optimizer: {out['optimizer']['speedup_vs_default']}")
        if "data" in sections:
            size, train = (64, 8) if args.quick else (1024, 24)
            out["data"] = data_section(preset, tmp, size, train, max(2, repeats // 2))
            d = out["data"]
            print(f"data ({size} px files): decoding {d['decode_share_of_uncached_epoch']:.0%} of an uncached epoch; "
                  f"cached epoch {d['cached_vs_uncached_epoch']:.2f} x uncached; 1 worker {d['one_worker_vs_none_uncached']:.2f} x")
        if "compile" in sections:
            out["compile"] = compile_section(preset, batch, repeats)
            c = out["compile"]
            print(f"compile: {c['compile_and_first_step_s']:.0f} s to compile, then {c['speedup']:.2f}x per step")
        if "peer" in sections:
            out["peer"] = peer_section(preset, tmp, 64, 32, max(3, repeats // 2), memory=not args.no_memory)
            p = out["peer"]
            print(f"peer: training ours/RD {p['train_ours_over_rd']:.2f} (batch 32: {p['train_ours_batch32_over_rd']:.2f}), "
                  f"inference ours/RD {p['inference_ours_over_rd']:.2f}; forward FLOPs ours/RD {p['forward_flops']['ours_over_rd']:.1f}")
    result = {
        "benchmark": "training_throughput",
        "command": "python -m benchmarks.training_throughput" + (" --quick" if args.quick else "") + (" --compile" if args.compile else ""),
        "environment": common.finish_environment(env),
        **out,
    }
    print(f"wrote {common.write_result('training_throughput', result, args.out_dir)}")
    return result


if __name__ == "__main__":
    main()
