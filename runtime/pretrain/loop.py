"""The training loop, readable top to bottom: set-up, data, model, optimiser, resume, train, checkpoint, export.

`Trainer` holds everything one process needs; `train(resource)` runs it. The same code runs the baseline and
the mask-guided variant: `method.fixes()` gives the effective switches, and with `useMasks: false` every one of
them is off (the masks are then not even decoded).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from freeatm.api import MaskPretrainJob
from freeatm.api.digest import spec_digest
from freeatm.api.pretrain_job import TextTower

from .. import metrics
from ..backbones import METADATA_FILE, WEIGHTS_FILE, Backbone, create_backbone, save_export
from ..dual_encoder import build_text_tokenizer, save_vlp_export
from ..errors import InvalidInput
from ..progress import reporter
from ..storage import MissingKey, cached_store
from . import checkpoint
from .contrastive import ContrastiveModel
from .data import (
    MEAN,
    STD,
    Augment,
    Captions,
    DatasetInfo,
    ShardStream,
    StreamConfig,
    check_captions,
    open_dataset,
)
from .distributed import DistInfo, all_gather_object, barrier, setup, teardown
from .mim import MAEModel
from .vlp import VLPModel

log = logging.getLogger("freeatm.pretrain")

# path: append each step's sample indices as JSON lines (tests, debugging)
TRACE_ENV = "FREEATM_TRACE_SAMPLES"
CONTRASTIVE_SCALE = (0.08, 1.0)  # SimCLR's RandomResizedCrop
MIM_SCALE = (0.2, 1.0)  # MAE's
# milder: the caption names the objects, so a crop keeps most of the image (flips stay: no ShapesBench caption
# word says left or right)
VLP_SCALE = (0.5, 1.0)
LR_REFERENCE_BATCH = 256  # the peak learning rate is training.lr × batchSize / 256


def training_digest(resource: MaskPretrainJob, dataset_digest: str) -> str:
    """Digest of what determines the training result: the dataset's content (its manifest digest, not where it
    lives: a moved dataset keeps its checkpoints), method, backbone and training settings."""
    spec = resource.spec.to_wire()
    relevant = {k: spec.get(k) for k in ("dataset", "method", "backbone", "training")}
    if "textTower" in spec:  # only vlp sets it; other specs keep the digests they had before it existed
        relevant["textTower"] = spec["textTower"]
    relevant["dataset"] = {"digest": dataset_digest}
    for operational in ("loaderWorkers", "checkpointEvery"):  # change how, not what, is trained
        relevant["training"].pop(operational, None)
    return spec_digest(relevant)


# --- optimisation -----------------------------------------------------------------------------------------------


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017) for parameters with weight decay."""

    def __init__(
        self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001
    ):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                # norms and biases are in the group without decay: no adaptation
                if group["weight_decay"] > 0:
                    d = d.add(p, alpha=group["weight_decay"])
                    pn, dn = torch.norm(p), torch.norm(d)
                    ratio = torch.where((pn > 0) & (dn > 0), group["eta"] * pn / dn, torch.ones_like(pn))
                    d = d.mul(ratio)
                buf = self.state[p].setdefault("mu", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or pname.endswith((".bias", "token", "pos_embed")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return LARS(groups, lr=lr)


def make_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, kind: str) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- the trainer ------------------------------------------------------------------------------------------------


class EpochStats:
    """Sums (and step counts, for means) of what the steps of one epoch report."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: float, mean: bool = False) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        if mean:
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / n for k, n in self.counts.items()}


class Trainer:
    """One process's share of a MaskPretrainJob."""

    def __init__(self, resource: MaskPretrainJob, dist: DistInfo | None = None) -> None:
        spec = resource.spec
        self.resource, self.spec = resource, spec
        self.dist = dist or DistInfo(0, 1, 0, torch.device("cpu"))
        self.method, self.training = spec.method, spec.training
        self.fixes = spec.method.fixes()
        self.output = spec.output.uri.rstrip("/")
        if spec.dataset.uri is None:
            raise InvalidInput(
                f"dataset.ref {spec.dataset.ref!r} was not resolved to a URI before the job started"
            )
        world = self.dist.world
        if self.training.batch_size % world:
            raise InvalidInput(
                f"training.batchSize {self.training.batch_size} does not split over {world} processes"
            )
        self.local_batch = self.training.batch_size // world

        # data
        self.info: DatasetInfo = open_dataset(
            spec.dataset.uri, need_masks=self.method.use_masks, batch_size=self.training.batch_size
        )
        self.digest = training_digest(resource, self.info.digest)
        self.steps_per_epoch = self.info.images // self.training.batch_size
        self.total_steps = self.steps_per_epoch * self.training.epochs
        contrastive = self.method.framework == "contrastive"
        vlp = self.method.framework == "vlp"
        want_masks = any(self.fixes.values())
        self.text_tower = spec.text_tower or TextTower()
        captions = None
        if vlp:  # the captions are checked before anything is written
            self.tokenizer = build_text_tokenizer(self.text_tower.tokenizer)
            captions = Captions(self.tokenizer, phrases=self.fixes["regionPhraseAlignment"])
            check_captions(self.info, captions)
        augment = Augment(
            size=self.training.image_size,
            scale=CONTRASTIVE_SCALE if contrastive else VLP_SCALE if vlp else MIM_SCALE,
            colour=contrastive,  # not for vlp either: captions name the colours
            mask_aware=self.fixes.get("maskAwareCrop", False),
            min_object_share=self.method.min_object_share,
        )
        self.stream = ShardStream(
            StreamConfig(
                info=self.info,
                rank=self.dist.rank,
                world=world,
                local_batch=self.local_batch,
                steps_per_epoch=self.steps_per_epoch,
                seed=self.training.seed,
                views=2 if contrastive else 1,
                augment=augment,
                want_masks=want_masks,
                captions=captions,
            )
        )

        # model
        torch.manual_seed(self.training.seed)
        self.backbone: Backbone = create_backbone(spec.backbone, self.training.image_size)
        if contrastive:
            self.model: nn.Module = ContrastiveModel(
                self.backbone,
                temperature=self.method.temperature,
                image_loss=self.method.image_level(),
                object_contrast=self.fixes["objectContrast"],
                object_temperature=self.method.object_temperature,
                object_loss_weight=self.method.object_loss_weight,
                silhouette=self.fixes["silhouette"],
                silhouette_loss_weight=self.method.silhouette_weight(),
            )
        elif vlp:
            phrase_temperature, phrase_loss_weight = self.method.phrase_term()
            self.model = VLPModel(
                self.backbone,
                self.tokenizer,
                width=self.text_tower.width,
                layers=self.text_tower.layers,
                heads=self.text_tower.heads,
                temperature=self.method.temperature,
                image_text_loss=self.method.image_text(),
                region_phrase=self.fixes["regionPhraseAlignment"],
                phrase_temperature=phrase_temperature,
                phrase_loss_weight=phrase_loss_weight,
            )
        else:
            if not self.backbone.is_vit:
                raise InvalidInput(f"framework mim (MAE) needs a ViT backbone, not {spec.backbone}")
            self.model = MAEModel(
                self.backbone,
                mask_ratio=self.method.mask_ratio,
                guided_masking=self.fixes.get("guidedMasking", False),
                hint_share=self.method.hint_share,
                object_weighted_loss=self.fixes.get("objectWeightedLoss", False),
            )
        self.model.to(self.dist.device)
        self.ddp: nn.Module = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.dist.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.ddp = DistributedDataParallel(self.model, device_ids=[self.dist.local_rank])
            else:
                self.ddp = DistributedDataParallel(self.model)

        # optimisation: training.lr is the rate for a batch of 256, scaled linearly with the batch (SimCLR, MAE)
        self.peak_lr = self.training.lr * self.training.batch_size / LR_REFERENCE_BATCH
        self.optimizer = make_optimizer(
            self.model, self.training.optimizer, self.peak_lr, self.training.weight_decay
        )
        warmup = round(self.training.warmup_epochs * self.steps_per_epoch)
        self.schedule = make_schedule(self.optimizer, warmup, self.total_steps, self.training.schedule)
        on_gpu = self.dist.device.type == "cuda"
        self.amp_dtype = (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.training.precision) if on_gpu else None
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=on_gpu and self.training.precision == "fp16")
        self.step, self.last_loss = 0, float("nan")
        self.epoch_stats = EpochStats()

    # -- data

    def batches(self, epoch: int, skip: int = 0, workers: int | None = None) -> DataLoader:
        """The rest of `epoch` for this rank, from batch `skip` on."""
        self.stream.set_epoch(epoch, skip)
        workers = self.training.loader_workers if workers is None else workers
        return DataLoader(
            self.stream,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.dist.device.type == "cuda",
            prefetch_factor=2 if workers else None,
        )

    # -- one step

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        device = self.dist.device
        made, missed = (int(n) for n in batch["objectCrops"])
        self.epoch_stats.add("objectCrops", made)
        self.epoch_stats.add("objectCropMisses", missed)
        metrics.TRAIN_OBJECT_CROPS.inc(made)
        metrics.TRAIN_OBJECT_CROP_MISSES.inc(missed)
        batch = {
            k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("index", "objectCrops")
        }
        if isinstance(self.model, MAEModel):
            g = torch.Generator()
            g.manual_seed(
                int(
                    np.random.SeedSequence([self.training.seed, self.dist.rank, self.step]).generate_state(1)[
                        0
                    ]
                )
            )
            self.model.generator = g
        self.ddp.train()
        autocast = torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            loss, parts = self.ddp(batch)
        if not torch.isfinite(loss):
            raise InvalidInput(
                f"training diverged: loss is {float(loss)} at step {self.step + 1}; lower training.lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.step += 1
        self.last_loss = float(loss.detach())
        for key, value in parts.items():
            self.epoch_stats.add(key, value, mean=True)
        return self.last_loss, parts

    def log_epoch(self, epoch: int) -> None:
        """One line per epoch (rank 0, its own steps): the mean of each loss part, and how many mask-aware crops
        missed their object; then start the next epoch's sums."""
        stats, self.epoch_stats = self.epoch_stats, EpochStats()
        means = stats.means()
        if "maskedObjectShare" in means:
            metrics.TRAIN_MASKED_OBJECT_SHARE.set(means["maskedObjectShare"])
        if not self.dist.is_main:
            return
        log.info(
            "epoch %d done at step %d: %s",
            epoch + 1, self.step, ", ".join(f"{k} {v:.4f}" for k, v in means.items()) or "no steps",
        )  # fmt: skip
        made, missed = int(stats.sums.get("objectCrops", 0)), int(stats.sums.get("objectCropMisses", 0))
        if made:
            log.info(
                "epoch %d: %d of %d mask-aware crops (%.1f%%) could not keep %.0f%% of their object and kept the "
                "baseline's position",
                epoch + 1, missed, made, 100 * missed / made, 100 * self.method.min_object_share,
            )  # fmt: skip

    # -- checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.step // self.steps_per_epoch,
            "specDigest": self.digest,
            "world": self.dist.world,
            "loss": self.last_loss,
        }

    def save_checkpoint(self) -> None:
        """Every rank contributes its RNG state; rank 0 writes."""
        rngs = all_gather_object(checkpoint.rng_state())
        if self.dist.is_main:
            uri = checkpoint.save(self.output, self.step, {**self.state(), "rng": rngs})
            log.info("checkpoint %s", uri)
        barrier()

    def resume(self) -> None:
        state = checkpoint.load_latest(self.output, self.digest)
        found = all_gather_object(state["step"] if state else 0)
        if len(set(found)) != 1:
            raise InvalidInput(
                f"ranks found different checkpoints under {self.output} ({found}): use shared storage"
            )
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.last_loss = int(state["step"]), float(state.get("loss", float("nan")))
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world:
            checkpoint.set_rng_state(rngs[self.dist.rank])

    # -- export

    def metadata(self) -> dict[str, Any]:
        return {
            "framework": self.method.framework,
            "useMasks": self.method.use_masks,
            "fixes": self.fixes,
            "method": self.method.to_wire(),
            "datasetUri": self.info.uri,
            "datasetDigest": self.info.digest,
            "specDigest": self.digest,
            "epochs": self.training.epochs,
            "steps": self.step,
            "seed": self.training.seed,
            "finalLoss": self.last_loss,
            "normalize": {"mean": list(MEAN), "std": list(STD)},
            "job": self.resource.metadata.name,
        }

    def finished_export(self) -> bool:
        """True when this very spec already trained to the end and exported (a restarted, finished pod)."""
        store = cached_store(self.output)
        try:
            meta = json.loads(store.read_bytes(METADATA_FILE))
        except (MissingKey, ValueError):
            return False
        return meta.get("specDigest") == self.digest and meta.get("steps") == self.total_steps

    # -- the run

    def fit(self) -> dict[str, Any]:
        """Train to the end (resuming if possible), checkpoint, export; return the job's outputs."""
        store = cached_store(self.output)
        outputs = {"uri": self.output, "checkpointUri": store.url(WEIGHTS_FILE)}
        if self.finished_export():
            log.info("%s already holds the finished export of this spec; nothing to do", self.output)
            return outputs
        self.resume()
        progress = reporter(self.total_steps, "steps")
        trace = os.environ.get(TRACE_ENV)
        every = self.training.checkpoint_every
        log.info(
            "pretraining %s %s on %s: %d steps (%d epochs × %d), batch %d (%d per process × %d), peak lr %.3g "
            "(lr %g × batch / %d), fixes %s, from step %d, on %s in %s",
            self.spec.backbone, self.method.framework, self.info.uri, self.total_steps, self.training.epochs,
            self.steps_per_epoch, self.training.batch_size, self.local_batch, self.dist.world, self.peak_lr,
            self.training.lr, LR_REFERENCE_BATCH, self.fixes, self.step, self.dist.device, self.training.precision,
        )  # fmt: skip
        for path, message in self.spec.warnings():
            log.warning("%s: %s", path, message)
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            metrics.TRAIN_EPOCH.set(epoch + 1)
            tick = time.perf_counter()
            for batch in self.batches(epoch, skip):
                if trace:
                    with open(f"{trace}.rank{self.dist.rank}", "a") as f:
                        f.write(
                            json.dumps(
                                {
                                    "step": self.step + 1,
                                    "rank": self.dist.rank,
                                    "index": batch["index"].tolist(),
                                }
                            )
                            + "\n"
                        )
                loss, _ = self.train_step(batch)
                now = time.perf_counter()
                metrics.TRAIN_LOSS.set(loss)
                metrics.TRAIN_STEP.set(self.step)
                metrics.TRAIN_THROUGHPUT.set(self.local_batch / max(now - tick, 1e-9))
                tick = now
                progress.update(self.step, epoch=epoch + 1, step=self.step, loss=round(loss, 5))
                if self.step % every == 0 or self.step == self.total_steps:
                    self.save_checkpoint()
            self.log_epoch(epoch)
        progress.update(
            self.step, force=True, epoch=self.training.epochs, step=self.step, loss=round(self.last_loss, 5)
        )
        if self.dist.is_main and isinstance(self.model, VLPModel):
            save_vlp_export(self.model, self.text_tower.tokenizer, self.metadata(), self.output)
        elif self.dist.is_main:
            save_export(self.backbone, self.metadata(), self.output)
        barrier()
        return outputs


def train(resource: MaskPretrainJob) -> dict[str, Any]:
    """Run this process's part of the job (torchrun starts one per GPU, or one per pod on CPU)."""
    dist = setup(use_gpu=resource.spec.distributed.gpus_per_node > 0)
    try:
        torch.manual_seed(resource.spec.training.seed + dist.rank)
        return Trainer(resource, dist).fit()
    finally:
        teardown()
