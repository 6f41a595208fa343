"""What every protocol shares: the loaded checkpoint, the benchmark's settings, image preprocessing, features."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast

from ..backbones import Backbone, load_export
from ..dual_encoder import DualEncoder, build_text_tokenizer, has_text_tower, load_vlp_export
from ..errors import InvalidInput
from .datasets import IGNORE, Sample, Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Checkpoint:
    """A backbone to evaluate, with what identifies it for resuming."""

    label: str
    uri: str
    backbone: Backbone
    metadata: dict[str, Any]
    fingerprint: str
    """sha256 over the URI, the metadata and the weights: a changed checkpoint re-runs its benchmarks."""
    device: torch.device = torch.device("cpu")
    """Where the backbone runs."""
    dual_encoder: DualEncoder | None = None
    """Both towers when the checkpoint was trained with method.framework vlp (its image tower is `backbone`);
    None for an image-only checkpoint."""
    tokenizer: PreTrainedTokenizerFast | None = None
    """The text tower's tokenizer (with `dual_encoder`)."""

    @property
    def mean(self) -> tuple[float, ...]:
        """The input normalisation the backbone was trained with (metadata.normalize), ImageNet's by default."""
        return tuple((self.metadata.get("normalize") or {}).get("mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple[float, ...]:
        return tuple((self.metadata.get("normalize") or {}).get("std", IMAGENET_STD))

    def describe(self) -> str:
        """One line for the report: backbone, method, fixes."""
        meta = self.metadata
        fixes = [k for k, v in (meta.get("fixes") or {}).items() if v]
        parts = [
            f"{meta.get('backbone', '?')} @ {meta.get('imageSize', '?')} px",
            str(meta.get("framework", "?")),
        ]
        parts.append("masks: " + (", ".join(fixes) if fixes else ("on" if meta.get("useMasks") else "off")))
        return "; ".join(parts)


def pick_device() -> torch.device:
    """FREEATM_DEVICE when set, else the first GPU when there is one, else the CPU."""
    return torch.device(os.environ.get("FREEATM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_checkpoint(label: str, uri: str) -> Checkpoint:
    """Build the backbone of `uri` (a MaskPretrainJob output or random://NAME) and, when the export holds one,
    its text tower; InvalidInput names what is wrong."""
    dual_encoder, tokenizer = None, None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random://: the same random baseline in every run (and after a restart)
            backbone, metadata = load_export(uri)
        if has_text_tower(metadata):
            dual_encoder, metadata = load_vlp_export(uri)
            backbone = dual_encoder.backbone
            tokenizer = build_text_tokenizer(str(metadata["textTower"]["tokenizer"]))
    except InvalidInput as e:
        raise InvalidInput(f"checkpoint {label}: {e}") from e
    model: nn.Module = dual_encoder if dual_encoder is not None else backbone
    model.eval().requires_grad_(False)
    digest = hashlib.sha256(uri.encode())
    digest.update(json.dumps(metadata, sort_keys=True, default=str).encode())
    if not uri.startswith("random://"):  # random weights are random: identify them by the recipe only
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    device = pick_device()
    model.to(device)
    return Checkpoint(label, uri, backbone, metadata, digest.hexdigest(), device, dual_encoder, tokenizer)


@dataclass
class Settings:
    """A benchmark's protocol parameters with the defaults filled in."""

    epochs: int
    lr: float
    batch_size: int
    image_size: int
    k: int
    finetune: bool
    seed: int = 0


def preprocess(image: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 H x W x 3 -> float [3, size, size], resized (bilinear, antialiased) and normalised."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def resize_mask(mask: np.ndarray, size: int) -> Tensor:
    """H x W class indices -> [size, size] int64 (nearest neighbour; IGNORE stays IGNORE)."""
    m = torch.from_numpy(np.ascontiguousarray(mask)).long()
    if m.shape != (size, size):
        m = F.interpolate(m[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return m


def image_batches(
    samples: list[Sample], size: int, ckpt: Checkpoint, batch_size: int
) -> Iterator[tuple[list[Sample], Tensor]]:
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        x = torch.stack([preprocess(s.load_image(), size, ckpt.mean, ckpt.std) for s in chunk])
        yield chunk, x.to(ckpt.device, non_blocking=True)


def _mask_of(sample: Sample, image: np.ndarray, size: int, where: str) -> Tensor:
    if sample.load_mask is None:
        raise InvalidInput(f"{where}: image {sample.id} has no label map")
    mask = sample.load_mask()
    if mask.shape != image.shape[:2]:
        raise InvalidInput(
            f"{where}: label map of image {sample.id} is {mask.shape[1]}x{mask.shape[0]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return resize_mask(mask, size)


def load_masks(samples: list[Sample], size: int, where: str) -> Tensor:
    """[N, size, size] label maps (checked against their images' sizes)."""
    return torch.stack([_mask_of(s, s.load_image(), size, where) for s in samples])


def load_batch(samples: list[Sample], size: int, ckpt: Checkpoint, where: str) -> tuple[Tensor, Tensor]:
    """Images [B, 3, size, size] on the checkpoint's device and their label maps [B, size, size] (on the CPU),
    each image decoded once."""
    images, masks = [], []
    for s in samples:
        image = s.load_image()
        images.append(preprocess(image, size, ckpt.mean, ckpt.std))
        masks.append(_mask_of(s, image, size, where))
    return torch.stack(images).to(ckpt.device, non_blocking=True), torch.stack(masks)


def fits_cache(items: int, bytes_per_item: int) -> bool:
    """Whether `items` cached tensors of `bytes_per_item` stay within FREEATM_EVAL_CACHE_BYTES (default 4 GiB);
    larger datasets are streamed batch by batch instead."""
    return items * bytes_per_item <= int(os.environ.get("FREEATM_EVAL_CACHE_BYTES", 4 << 30))


# Frozen features of recent (checkpoint, split, size) combinations, within the cache budget (fits_cache): kNN,
# the linear probe, presence and retrieval on the same data share one forward pass over it, and the object probe's
# pass fills the global features too.
_CACHE: OrderedDict[tuple[str, ...], Tensor] = OrderedDict()


def _key(kind: str, ckpt: Checkpoint, split: Split, settings: Settings) -> tuple[str, ...]:
    ids = hashlib.sha256("\0".join(s.id for s in split.samples).encode()).hexdigest()
    return (kind, ckpt.fingerprint, split.where, split.name, ids, str(settings.image_size))


def _remember(key: tuple[str, ...], value: Tensor) -> Tensor:
    _CACHE[key] = value
    _CACHE.move_to_end(key)
    while len(_CACHE) > 1 and not fits_cache(1, sum(t.numel() * t.element_size() for t in _CACHE.values())):
        _CACHE.popitem(last=False)
    return value


def _cached(
    kind: str, ckpt: Checkpoint, split: Split, settings: Settings, compute: Callable[[], Tensor]
) -> Tensor:
    key = _key(kind, ckpt, split, settings)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    return _remember(key, compute())


def clear_feature_cache() -> None:
    _CACHE.clear()


@torch.no_grad()
def _features(ckpt: Checkpoint, split: Split, settings: Settings, dense: bool) -> Tensor:
    forward = ckpt.backbone.forward_features if dense else ckpt.backbone
    feats = [
        forward(x) for _, x in image_batches(split.samples, settings.image_size, ckpt, settings.batch_size)
    ]
    return torch.cat(feats).float().cpu()


def pooled_features(ckpt: Checkpoint, split: Split, settings: Settings) -> Tensor:
    """[N, C] global features of the frozen backbone."""
    return _cached("pooled", ckpt, split, settings, lambda: _features(ckpt, split, settings, dense=False))


def dense_features(ckpt: Checkpoint, split: Split, settings: Settings) -> Tensor:
    """[N, C, h, w] dense features of the frozen backbone."""
    return _cached("dense", ckpt, split, settings, lambda: _features(ckpt, split, settings, dense=True))


def object_features(ckpt: Checkpoint, split: Split, settings: Settings) -> tuple[Tensor, Tensor]:
    """([M, C] features, [M] class labels) of every object of `split` that its instance map shows: the frozen
    dense map averaged inside the object's mask, each cell weighted by the share of it the object covers. The
    same pass leaves the split's global features (pooled_features) and, when they fit, its dense maps
    (dense_features) in the cache: presence and semseg on the same images need no pass of their own."""
    keys = [_key(kind, ckpt, split, settings) for kind in ("objects", "object-labels")]
    if all(k in _CACHE for k in keys):
        return _CACHE[keys[0]], _CACHE[keys[1]]
    feats, labels, pooled, dense = _object_pass(ckpt, split, settings)
    _remember(_key("pooled", ckpt, split, settings), pooled)
    if dense is not None:
        _remember(_key("dense", ckpt, split, settings), dense)
    return _remember(keys[0], feats), _remember(keys[1], labels)


@torch.no_grad()
def _object_pass(
    ckpt: Checkpoint, split: Split, settings: Settings
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    feats, labels, pooled, dense_maps = [], [], [], []
    keep_dense = True
    for chunk, x in image_batches(split.samples, settings.image_size, ckpt, settings.batch_size):
        dense = ckpt.backbone.forward_features(x).float().cpu()
        pooled.append(dense.mean(dim=(2, 3)))  # what Backbone.forward computes
        keep_dense = keep_dense and fits_cache(len(split), dense[0].numel() * dense.element_size())
        dense_maps.append(dense if keep_dense else dense[:0])
        for sample, fmap in zip(chunk, dense, strict=True):
            instances = instance_map(sample, split.where)
            ids = torch.arange(1, len(sample.object_labels) + 1)
            # Area share of each object in each feature cell: the whole image maps onto the grid.
            weights = F.adaptive_avg_pool2d((instances[None] == ids[:, None, None]).float(), fmap.shape[1:])
            mass = weights.sum(dim=(1, 2))
            shown = mass > 0  # an object the label map does not show (e.g. an attention mask that missed it)
            feats.append(torch.einsum("khw,chw->kc", weights[shown], fmap) / mass[shown, None])
            labels.append(torch.tensor(sample.object_labels, dtype=torch.long)[shown])
    return (
        torch.cat(feats),
        torch.cat(labels),
        torch.cat(pooled),
        torch.cat(dense_maps) if keep_dense else None,
    )


def load_instances(samples: list[Sample], size: int, where: str) -> Tensor:
    """[N, size, size] instance maps (nearest neighbour; checked against their images' sizes)."""
    return torch.stack([resize_mask(instance_map(s, where).numpy(), size) for s in samples])


def instance_map(sample: Sample, where: str) -> Tensor:
    """The H x W instance map of `sample` (0 = background, k = its k-th object), checked against its image."""
    if sample.load_instances is None:
        raise InvalidInput(f"{where}: image {sample.id} has no object masks")
    instances = sample.load_instances()
    image = sample.load_image()
    if instances.shape != image.shape[:2]:
        raise InvalidInput(
            f"{where}: instance map of image {sample.id} is {instances.shape[1]}x{instances.shape[0]} but the "
            f"image is {image.shape[1]}x{image.shape[0]}"
        )
    return torch.from_numpy(np.ascontiguousarray(instances)).long()


def labels_of(split: Split) -> Tensor:
    return torch.tensor([s.label for s in split.samples], dtype=torch.long)


def presence_of(split: Split) -> Tensor:
    """[N, classes] float multi-hot: which classes the objects of each image belong to."""
    present = torch.zeros(len(split), len(split.classes))
    for i, sample in enumerate(split.samples):
        present[i, sample.object_labels] = 1.0
    return present


__all__ = [
    "IGNORE",
    "Checkpoint",
    "Settings",
    "dense_features",
    "image_batches",
    "instance_map",
    "labels_of",
    "load_checkpoint",
    "load_instances",
    "load_masks",
    "object_features",
    "pooled_features",
    "presence_of",
    "preprocess",
]
