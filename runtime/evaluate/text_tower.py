"""The protocols that read a checkpoint's own text tower (a MaskPretrainJob with method.framework vlp, loaded by
dual_encoder.load_vlp_export). Nothing is trained here: both towers are used as exported.

- zero-shot: each object's region embedding (the dense image embedding averaged inside its true mask,
  DualEncoder.region_embeddings) against the phrase embedding of every class name, each encoded as
  "a <class>": top1 over the objects the feature grid shows.
- grounding: each object phrase of the image's caption (its modifiers and word, dual_encoder.phrase_mask):
  the cosine similarity of the phrase embedding with every cell of the dense image embedding, upsampled
  bilinearly to the instance map's resolution, min-max normalised and thresholded at 0.5 (grounding_iou),
  against the object's true mask: mean_iou, and iou50 (the share of objects whose IoU is at least 0.5).
- retrieval: for a checkpoint with a text tower, retrieval.py scores the similarities of both towers' global
  embeddings (text_tower_similarity).

A checkpoint without a text tower has no zero-shot or grounding scores: job.py records the run as
NO_TEXT_TOWER and the report shows that in the row, so an image-only baseline sits beside a VLP checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from ..dual_encoder import DualEncoder, phrase_mask, tokenize
from ..errors import InvalidInput
from .common import Checkpoint, Settings, image_batches, instance_map, load_instances
from .datasets import Sample, Split

NO_TEXT_TOWER = "n/a: no text tower"
GROUNDING_THRESHOLD = 0.5


def check_encodable(ckpt: Checkpoint, protocol: str, split: Split) -> None:
    """Raise InvalidInput before any work when `ckpt`'s text tower cannot encode what `protocol` will give it on
    `split`: the captions (retrieval, grounding), the object phrases in them (grounding), the class names
    (zero-shot)."""
    model, tokenizer = _towers(ckpt)
    try:
        if protocol == "zero-shot":
            class_embeddings(model, tokenizer, split.classes, ckpt.device)
            return
        captions = [_caption(sample, split) for sample in split.samples]
        tokenize(tokenizer, sorted(set(captions)))
        if protocol == "grounding":
            for caption, sample in zip(captions, split.samples, strict=True):
                phrase_mask(tokenizer, caption, sample.object_records)
    except InvalidInput as e:
        raise InvalidInput(f"checkpoint {ckpt.label} on {split.where}: {e}") from e


def _towers(ckpt: Checkpoint) -> tuple[DualEncoder, PreTrainedTokenizerFast]:
    if ckpt.dual_encoder is None or ckpt.tokenizer is None:
        raise InvalidInput(
            f"checkpoint {ckpt.label} has no text tower: it was not trained with method.framework vlp"
        )
    return ckpt.dual_encoder, ckpt.tokenizer


@torch.no_grad()
def class_embeddings(
    model: DualEncoder, tokenizer: PreTrainedTokenizerFast, classes: list[str], device: torch.device
) -> Tensor:
    """[classes, E] the phrase embedding of each class word, encoded in the prompt "a <class>"."""
    prompts = [f"a {name}" for name in classes]
    ids, attention = tokenize(tokenizer, prompts)
    _, states = model.encode_text(ids.to(device), attention.to(device))
    masks = torch.stack(
        [
            phrase_mask(tokenizer, prompt, [{"word": name, "modifiers": [], "label": 1}])
            for prompt, name in zip(prompts, classes, strict=True)
        ]
    )
    return model.phrase_embeddings(states, masks.to(device))[:, 0]


@torch.no_grad()
def run_zero_shot(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    model, tokenizer = _towers(ckpt)
    text = class_embeddings(model, tokenizer, val.classes, ckpt.device)
    correct = total = 0
    for chunk, x in image_batches(val.samples, settings.image_size, ckpt, settings.batch_size):
        _, dense = model.encode_image(x)
        labels = load_instances(chunk, settings.image_size, val.where).to(ckpt.device)
        regions, shown = model.region_embeddings(dense, labels)
        predicted = (regions @ text.T).argmax(dim=2).cpu()  # [B, K]
        shown = shown.cpu()
        for i, sample in enumerate(chunk):
            for k, truth in enumerate(sample.object_labels[: regions.shape[1]]):
                if shown[i, k]:
                    total += 1
                    correct += int(predicted[i, k] == truth)
    if total == 0:
        raise InvalidInput(f"{val.where}: split {val.name!r} shows no object on the feature grid")
    return {"top1": correct / total}


def grounding_iou(similarity: Tensor, truth: Tensor) -> float:
    """IoU of the true mask `truth` [H, W] (bool) with the region a phrase grounds to: the cell similarities
    `similarity` [h, w] upsampled bilinearly to H x W, min-max normalised, at least GROUNDING_THRESHOLD. A
    flat map grounds nowhere."""
    up = F.interpolate(
        similarity[None, None].float(), size=tuple(truth.shape), mode="bilinear", align_corners=False
    )[0, 0]
    low, high = up.min(), up.max()
    if torch.isclose(high, low):  # interpolation leaves float noise on a flat map
        return 0.0
    predicted = (up - low) / (high - low) >= GROUNDING_THRESHOLD
    truth = truth.to(predicted.device)
    union = (predicted | truth).sum()
    return float((predicted & truth).sum() / union) if union > 0 else 0.0


@torch.no_grad()
def run_grounding(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    model, tokenizer = _towers(ckpt)
    ious: list[float] = []
    for chunk, x in image_batches(val.samples, settings.image_size, ckpt, settings.batch_size):
        _, dense = model.encode_image(x)
        captions = [_caption(sample, val) for sample in chunk]
        ids, attention = tokenize(tokenizer, captions)
        _, states = model.encode_text(ids.to(ckpt.device), attention.to(ckpt.device))
        masks = torch.stack(
            [
                phrase_mask(tokenizer, caption, sample.object_records)
                for caption, sample in zip(captions, chunk, strict=True)
            ]
        ).to(ckpt.device)
        phrases = model.phrase_embeddings(states, masks)  # [B, K, E], L2-normalised
        similarity = torch.einsum("bke,behw->bkhw", phrases, F.normalize(dense, dim=1)).cpu()
        masks = masks.cpu()
        for i, sample in enumerate(chunk):
            instances = instance_map(sample, val.where)
            for k in range(min(len(sample.object_records), masks.shape[1])):
                truth = instances == k + 1
                if masks[i, k].any() and truth.any():  # the caption names it and the image shows it
                    ious.append(grounding_iou(similarity[i, k], truth))
    if not ious:
        raise InvalidInput(f"{val.where}: split {val.name!r} shows no object its caption names")
    scores = torch.tensor(ious)
    return {"mean_iou": float(scores.mean()), "iou50": float((scores >= 0.5).float().mean())}


@torch.no_grad()
def text_tower_similarity(ckpt: Checkpoint, split: Split, captions: list[str], settings: Settings) -> Tensor:
    """[images, captions] cosine similarities of the global embeddings of the split's images and `captions`."""
    model, tokenizer = _towers(ckpt)
    images = torch.cat(
        [
            model.encode_image(x)[0]
            for _, x in image_batches(split.samples, settings.image_size, ckpt, settings.batch_size)
        ]
    )
    texts = []
    for start in range(0, len(captions), settings.batch_size):
        ids, attention = tokenize(tokenizer, captions[start : start + settings.batch_size])
        texts.append(model.encode_text(ids.to(ckpt.device), attention.to(ckpt.device))[0])
    return (images @ torch.cat(texts).T).float().cpu()


def _caption(sample: Sample, split: Split) -> str:
    if not sample.captions:
        raise InvalidInput(f"{split.where}: image {sample.id} has no caption")
    return sample.captions[0]
