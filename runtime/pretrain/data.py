"""Training data: a synthetic dataset's shards streamed with webdataset, paired image+mask augmentation.

Reading. `open_dataset` reads and checks manifest.json (docs/dataset-format.md). Every process (rank) and every
loader worker inside it reads its own part: with at least as many shards as ranks, rank r reads shards r,
r+world, …; with fewer shards than ranks every rank reads all shards and keeps the samples whose index ≡ rank
(mod world) — disjoint either way. Shards stream from storage (Store.open_read) through the verifying reader,
one shard at a time.

Determinism. The order of an epoch is a function of (seed, epoch, rank, worker) and a batch's augmentation a
function of (seed, epoch, rank, global batch index), so a resumed run skips the batches it already trained on
without decoding them and then sees exactly the batches the interrupted run would have seen.

Augmentation. Geometric operations (crop, resize, flip) apply identically to the image and its label map
(nearest-neighbour), colour operations to the image only. Mask-aware cropping picks one object of the image
and places each view's crop so that it keeps at least `min_object_share` of that object's pixels; the crop's
size and aspect, the flip and the colour jitter are drawn exactly as the baseline draws them, from the same
random numbers (see `object_box`), and a crop that cannot keep the object is counted, never hidden.

Captions (framework vlp). Each sample's record (`KEY.json`) gives its prompt, tokenized for the text tower, and
with regionPhraseAlignment its objects, whose phrases become token masks (`Captions`); a prompt the tokenizer
cannot encode, or a record without object words, is the dataset's fault (InvalidInput), checked over the first
shard before training starts (`check_captions`) and in every batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerFast

from ..dataset_format import IMAGE, MANIFEST, MASK, RECORD, parse_manifest, shard_samples
from ..dual_encoder import phrase_mask, tokenize
from ..errors import InvalidInput
from ..storage import MissingKey, cached_store, join, open_store

log = logging.getLogger("freeatm.pretrain.data")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_TRIES = 10
SHUFFLE_BUFFER = 256


@dataclass
class DatasetInfo:
    """A dataset's manifest and what training needs from it."""

    uri: str
    manifest: dict[str, Any]
    digest: str  # sha256 of manifest.json, as SyntheticDataset reports it
    shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images(self) -> int:
        return int(self.manifest["images"])

    @property
    def has_masks(self) -> bool:
        return bool(self.manifest.get("hasMasks"))


def open_dataset(uri: str, *, need_masks: bool, batch_size: int) -> DatasetInfo:
    """Read and check the dataset at `uri`; InvalidInput with a specific message when it cannot be trained on."""
    store = open_store(uri)
    try:
        raw = store.read_bytes(MANIFEST)
    except MissingKey as e:
        raise InvalidInput(
            f"dataset {uri} has no manifest.json: it is not a dataset written by a SyntheticDataset, or its "
            "generation has not finished"
        ) from e
    manifest = parse_manifest(raw, join(uri, MANIFEST))
    shards = [s for s in manifest.get("shards") or [] if int(s.get("samples", 0)) > 0]
    images = int(manifest.get("images") or 0)
    if images <= 0 or not shards:
        raise InvalidInput(
            f"dataset {uri} is empty: its manifest lists {images} images in {len(shards)} shards"
        )
    if need_masks and not manifest.get("hasMasks"):
        raise InvalidInput(
            f"method.useMasks is true but dataset {uri} has no masks (manifest hasMasks: false); "
            "generate it with masks or set useMasks: false for the baseline"
        )
    if batch_size > images:
        raise InvalidInput(
            f"training.batchSize {batch_size} is larger than the dataset ({images} images in {uri})"
        )
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return DatasetInfo(uri=uri, manifest=manifest, digest=digest, shards=shards)


# --- who reads what ---------------------------------------------------------------------------------------------


def assign(
    num_shards: int, rank: int, world: int, worker: int = 0, workers: int = 1
) -> tuple[list[int], int, int]:
    """The shards consumer (rank, worker) reads and the (modulus, remainder) its sample indices must satisfy.

    Shards are split over ranks when there are enough, otherwise samples are; inside a rank the same rule
    splits the rank's part over its loader workers. The parts of all consumers are disjoint.
    """
    if num_shards >= world:
        mine = list(range(rank, num_shards, world))
        if len(mine) >= workers:
            return mine[worker::workers], 1, 0
        return mine, workers, worker
    return list(range(num_shards)), world * workers, rank * workers + worker


def iter_raw(
    uri: str, shards: list[dict[str, Any]], modulus: int = 1, remainder: int = 0
) -> Iterator[dict[str, Any]]:
    """Undecoded samples ({"__key__", "png", "mask.png", "json", …}) of the given manifest shard entries, in
    order, each shard verified against its entry (dataset_format.shard_samples)."""
    store = cached_store(uri)
    for entry in shards:
        shard_uri = store.url(entry["name"])
        for sample in shard_samples(store, entry):
            key = sample["__key__"].rsplit("/", 1)[-1]
            try:
                index = int(key)
            except ValueError as e:
                raise InvalidInput(f"{shard_uri}: sample key {key!r} is not a zero-padded index") from e
            if index % modulus == remainder:
                sample["index"] = index
                yield sample


def decode(sample: dict[str, Any], want_mask: bool) -> tuple[torch.Tensor, np.ndarray | None]:
    """(uint8 RGB image [3,H,W], uint8 label map H×W at the image's size or None); InvalidInput naming the
    sample and its shard when a PNG is missing or does not decode."""
    from PIL import Image

    where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    for member in (IMAGE, MASK) if want_mask else (IMAGE,):
        if member not in sample:
            raise InvalidInput(f"{where} has no .{member} member")
    try:
        rgb = Image.open(io.BytesIO(sample[IMAGE])).convert("RGB")
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()
        if not want_mask:
            return image, None
        mask_img = Image.open(io.BytesIO(sample[MASK]))
        if mask_img.size != rgb.size:
            mask_img = mask_img.resize(rgb.size, Image.Resampling.NEAREST)
        return image, np.array(mask_img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for bytes that are not a valid PNG
        raise InvalidInput(f"{where}: corrupt image or mask PNG ({type(e).__name__}: {e})") from e


# --- captions ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Captions:
    """vlp: how a sample's prompt becomes "input_ids"/"attention_mask", and with `phrases` its objects' phrases
    "phrase_mask" (dual_encoder.tokenize and phrase_mask)."""

    tokenizer: PreTrainedTokenizerFast
    phrases: bool

    def encode(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, attention, masks = [], [], []
        for sample in samples:
            where = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
            prompt, objects = self._record(sample, where)
            try:
                i, a = tokenize(self.tokenizer, [prompt])
                if self.phrases:
                    masks.append(phrase_mask(self.tokenizer, prompt, objects))
            except InvalidInput as e:
                raise InvalidInput(f"{where}: {e}") from e
            ids.append(i[0])
            attention.append(a[0])
        out = {"input_ids": torch.stack(ids), "attention_mask": torch.stack(attention)}
        if self.phrases:
            out["phrase_mask"] = torch.stack(masks)
        return out

    def _record(self, sample: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
        try:
            record = json.loads(sample[RECORD])
        except KeyError as e:
            raise InvalidInput(f"{where} has no .{RECORD} record: framework vlp trains on its prompt") from e
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInput(f"{where}: its .{RECORD} record is not valid JSON: {e}") from e
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput(f"{where}: its record has no prompt, which framework vlp trains on")
        objects = record.get("objects")
        if self.phrases and not (
            isinstance(objects, list)
            and objects
            and all(isinstance(o, dict) and isinstance(o.get("word"), str) for o in objects)
        ):
            raise InvalidInput(
                f"{where}: its record has no object words (objects[].word), which regionPhraseAlignment aligns "
                "with the masks; set useMasks: false for the baseline"
            )
        return prompt, objects or []


def check_captions(info: DatasetInfo, captions: Captions) -> None:
    """Encode every caption of the dataset's first shard: InvalidInput before training when it cannot."""
    for sample in iter_raw(info.uri, info.shards[:1]):
        captions.encode([sample])


# --- augmentation -----------------------------------------------------------------------------------------------
#
# Both arms of one seed draw the same random numbers: every view takes CROP_DRAWS uniforms for its crop (whether
# the crop is mask-aware or not) and COLOUR_DRAWS for flip and colour, so the flip, the colour jitter and the
# crop's size and aspect are identical in the baseline and the mask-guided run; the masks decide only where a
# mask-aware crop sits, and only when the baseline's position would not keep the object.

CROP_DRAWS = 2 * CROP_TRIES + 3  # (area, aspect) per try, top, left, and the mask-aware placement
COLOUR_DRAWS = 11  # flip, jitter on/off, 4 factors, 4 keys of the jitter order, grayscale
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def _crop_size(u: list[float], h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """RandomResizedCrop's size (height, width): the first of CROP_TRIES (area share in `scale`, aspect ratio in
    [3/4, 4/3]) that fits, else the largest centred crop of aspect within those bounds."""
    for u_area, u_ratio in zip(u[:CROP_TRIES], u[CROP_TRIES : 2 * CROP_TRIES], strict=True):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u_area)
        ratio = math.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * u_ratio)
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return ch, cw
    if w / h < 3 / 4:
        return round(w / (3 / 4)), w
    if w / h > 4 / 3:
        return h, round(h * 4 / 3)
    return h, w


def random_box(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (top, left, height, width); takes CROP_DRAWS uniforms from `rng`."""
    u = rng.random(CROP_DRAWS).tolist()
    ch, cw = _crop_size(u, h, w, scale)
    return int(u[-3] * (h - ch + 1)), int(u[-2] * (w - cw + 1)), ch, cw


def integral_image(obj: np.ndarray) -> np.ndarray:
    """Summed-area table of a boolean mask, [H+1, W+1]: the pixel count of any box in four look-ups."""
    integral = np.zeros((obj.shape[0] + 1, obj.shape[1] + 1), np.int64)
    integral[1:, 1:] = obj.cumsum(0).cumsum(1)
    return integral


def object_box(
    rng: np.random.Generator, integral: np.ndarray, scale: tuple[float, float], min_share: float
) -> tuple[tuple[int, int, int, int], bool]:
    """A RandomResizedCrop box that keeps at least `min_share` of an object's pixels (`integral`: its
    integral_image), and whether it does. Takes the same CROP_DRAWS uniforms as random_box and the same size.

    The baseline's position is kept when it keeps the object; otherwise a position is drawn uniformly among those
    that do (rejection sampling of the position, done exactly over all positions), so the box's size and aspect
    follow RandomResizedCrop's distribution exactly. When no position keeps the share, the baseline's box is
    returned with False."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    u = rng.random(CROP_DRAWS).tolist()
    ch, cw = _crop_size(u, h, w, scale)
    top, left = int(u[-3] * (h - ch + 1)), int(u[-2] * (w - cw + 1))
    need = min_share * max(int(integral[h, w]), 1)
    i = integral
    if i[top + ch, left + cw] - i[top, left + cw] - i[top + ch, left] + i[top, left] >= need:
        return (top, left, ch, cw), True
    inside = i[ch:, cw:] - i[: h - ch + 1, cw:] - i[ch:, : w - cw + 1] + i[: h - ch + 1, : w - cw + 1]
    valid = np.flatnonzero(inside >= need)  # every position, row-major
    if not valid.size:
        return (top, left, ch, cw), False
    top, left = divmod(int(valid[int(u[-1] * valid.size)]), w - cw + 1)
    return (top, left, ch, cw), True


@dataclass(frozen=True)
class Augment:
    """Per-view augmentation settings."""

    size: int
    scale: tuple[float, float]
    colour: bool  # colour jitter (p=0.8) and grayscale (p=0.2), SimCLR strengths
    mask_aware: bool = False
    min_object_share: float = 0.3


@dataclass(frozen=True)
class ViewParams:
    """What one view's random numbers decided."""

    box: tuple[int, int, int, int]  # top, left, height, width
    flip: bool
    jitter: tuple[float, float, float, float] | None  # brightness, contrast, saturation, hue; None: no jitter
    order: tuple[int, ...]  # the order the four jitter operations apply in
    gray: bool
    kept: bool | None  # mask-aware crop: whether it keeps the object's share; None: not mask-aware


def draw_view(rng: np.random.Generator, h: int, w: int, aug: Augment, obj: np.ndarray | None) -> ViewParams:
    """One view's parameters; the same number of draws from `rng` whatever `aug` and `obj` are.
    `obj`: the integral_image of the object a mask-aware crop must keep, or None for a plain crop."""
    kept = None
    if obj is not None:
        box, kept = object_box(rng, obj, aug.scale, aug.min_object_share)
    else:
        box = random_box(rng, h, w, aug.scale)
    u = rng.random(COLOUR_DRAWS).tolist()
    jitter = None
    if aug.colour and u[1] < 0.8:
        jitter = (0.6 + 0.8 * u[2], 0.6 + 0.8 * u[3], 0.6 + 0.8 * u[4], -0.1 + 0.2 * u[5])
    order = tuple(sorted(range(4), key=u[6:10].__getitem__))
    return ViewParams(box, u[0] < 0.5, jitter, order, aug.colour and u[10] < 0.2, kept)


def crop_labels(
    labels: np.ndarray, top: int, left: int, ch: int, cw: int, size: int, flip: bool
) -> np.ndarray:
    """The label map cropped and resized like the image (nearest neighbour at the output pixel centres)."""
    rows = top + ((np.arange(size) + 0.5) * ch / size).astype(np.int64)
    cols = left + ((np.arange(size) + 0.5) * cw / size).astype(np.int64)
    if flip:
        cols = cols[::-1]
    return labels[rows[:, None], cols[None, :]]


def apply_view(
    image: torch.Tensor, labels: np.ndarray | None, params: ViewParams, size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float image [3,S,S] normalised, label map [S,S] uint8 (same geometry) or None."""
    from torchvision.transforms.v2 import functional as F

    top, left, ch, cw = params.box
    img = F.resized_crop(image, top, left, ch, cw, [size, size], antialias=True)
    if params.flip:
        img = img.flip(-1)
    out_labels = None
    if labels is not None:
        out_labels = torch.from_numpy(crop_labels(labels, top, left, ch, cw, size, params.flip))
    img = img.float() / 255.0
    if params.jitter is not None:
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for i in params.order:
            img = ops[i](img, params.jitter[i])
    if params.gray:
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    return F.normalize(img, MEAN, STD), out_labels


def view(
    rng: np.random.Generator,
    image: torch.Tensor,
    labels: np.ndarray | None,
    aug: Augment,
    obj: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor | None, ViewParams]:
    """One augmented view of a uint8 image [3,H,W] and its label map: (image, labels, what was drawn)."""
    params = draw_view(rng, image.shape[1], image.shape[2], aug, obj)
    img, lab = apply_view(image, labels, params, aug.size)
    return img, lab, params


# --- the streaming dataset --------------------------------------------------------------------------------------


@dataclass
class StreamConfig:
    """What one rank reads and how it turns samples into batches."""

    info: DatasetInfo
    rank: int
    world: int
    local_batch: int
    steps_per_epoch: int
    seed: int
    views: int  # 2: contrastive pair; 1: MIM
    augment: Augment
    want_masks: bool
    captions: Captions | None = None  # vlp: the prompts' tokens (and phrase masks)


class ShardStream(IterableDataset):
    """Yields this rank's batches of one epoch (set with `set_epoch`), skipping the first `skip` batches.

    Each loader worker produces every `workers`-th batch of the epoch from its own part of the rank's data; the
    DataLoader interleaves them back into order. A batch is a dict: "index" [B] and "view1"/"view2" (contrastive)
    or "image" (MIM, VLP), with "mask1"/"mask2"/"mask" label maps when masks are used, the Captions' tensors
    (VLP), and "objectCrops" ([mask-aware crops made, missed]).
    """

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _samples(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        """This worker's samples, shuffled, cycling (a new order each pass) for as long as it is asked."""
        cfg = self.cfg
        shard_ids, modulus, remainder = assign(len(cfg.info.shards), cfg.rank, cfg.world, worker, workers)
        entries = [cfg.info.shards[i] for i in shard_ids]
        for cycle in range(1_000_000):
            rng = np.random.default_rng([cfg.seed, self.epoch, cfg.rank, worker, cycle])
            order = [entries[i] for i in rng.permutation(len(entries))]
            buffer: list[dict[str, Any]] = []
            produced = 0
            for sample in iter_raw(cfg.info.uri, order, modulus, remainder):
                buffer.append(sample)
                if len(buffer) >= SHUFFLE_BUFFER:
                    yield buffer.pop(int(rng.integers(len(buffer))))
                    produced += 1
            while buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
                produced += 1
            if produced == 0:
                raise InvalidInput(
                    f"dataset {cfg.info.uri}: rank {cfg.rank} found no samples in {[e['name'] for e in order]}"
                )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader asks worker 0 first: physical worker w serves the batches b ≡ skip + w (mod workers),
        # so the data of batch b depends on (epoch, b, workers) only, not on where the run (re)started.
        virtual = (self.skip + worker) % workers
        samples = self._samples(virtual, workers)
        for b in range(virtual, cfg.steps_per_epoch, workers):
            raw = [next(samples) for _ in range(cfg.local_batch)]
            if b < self.skip:
                continue  # trained on before the restart: read, not decoded
            yield self.make_batch(raw, b)

    def make_batch(self, raw: list[dict[str, Any]], b: int) -> dict[str, torch.Tensor]:
        """Decode and augment one batch. Besides the views, "objectCrops" counts the mask-aware crops made and
        those that could not keep their object ([made, missed]; zeros when mask-aware cropping is off)."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, cfg.rank, b, 7])
        keys = ("view1", "view2") if cfg.views == 2 else ("image",)
        mask_keys = ("mask1", "mask2") if cfg.views == 2 else ("mask",)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in (*keys, *mask_keys)}
        made = missed = 0
        for sample in raw:
            image, labels = decode(sample, cfg.want_masks)
            pick = rng.random()  # drawn in both arms: which object the mask-aware views keep
            obj = None
            if cfg.augment.mask_aware and labels is not None:
                present = np.flatnonzero(np.bincount(labels.ravel(), minlength=2)[1:]) + 1
                if present.size:
                    obj = integral_image(labels == present[int(pick * present.size)])
            for key, mask_key in zip(keys, mask_keys, strict=True):
                img, lab, params = view(rng, image, labels, cfg.augment, obj)
                out[key].append(img)
                if lab is not None:
                    out[mask_key].append(lab)
                if params.kept is not None:
                    made += 1
                    missed += not params.kept
        batch = {k: torch.stack(v) for k, v in out.items() if v}
        if cfg.captions is not None:
            batch.update(cfg.captions.encode(raw))
        batch["index"] = torch.tensor([s["index"] for s in raw], dtype=torch.long)
        batch["objectCrops"] = torch.tensor([made, missed], dtype=torch.long)
        return batch
