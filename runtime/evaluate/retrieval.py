"""Image-text retrieval, recall@K on the scored split's captions, with one of two text sides: the checkpoint's
own text tower when it has one (method.framework vlp), else a text tower learnt here on the fly.

Own text tower (text_tower.text_tower_similarity): both towers' global embeddings as exported, nothing is
trained. Learnt on the fly, in the "locked image" style (LiT): the backbone stays frozen and a small text tower
is trained on the training split's captions: a word-level vocabulary from the training captions, mean-pooled
word embeddings and a linear map into a shared 128-d space beside a linear projection of the frozen global image
features, trained with the symmetric CLIP loss. That tower is a bag of words (it cannot tell "a red circle and a
blue square" from "a blue circle and a red square"): the score compares image features under one fixed, weak
text model, it is not a CLIP-grade number. The run records which side was used (job.text_side) and the report
labels each cell with it, so the two protocols share one benchmark name and one row.

Recall counts a hit when a retrieved caption (image->text) or image (text->image) carries the same caption text,
so identical captions of different images are not counted as misses. The row value is the mean of both
directions.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInput
from .common import Checkpoint, Settings, pooled_features
from .datasets import Split
from .scores import recall_at_k
from .text_tower import text_tower_similarity

EMBED_DIM = 128
TEMPERATURE = 0.07


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


class TextTower(nn.Module):
    def __init__(self, vocab: dict[str, int]) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.EmbeddingBag(len(vocab) + 1, EMBED_DIM, mode="mean")  # index 0 = unknown word
        self.proj = nn.Linear(EMBED_DIM, EMBED_DIM)

    def encode(self, captions: list[str]) -> Tensor:
        ids, offsets = [], []
        for caption in captions:
            offsets.append(len(ids))
            ids.extend(self.vocab.get(w, 0) for w in _words(caption) or ["<empty>"])
        return F.normalize(self.proj(self.embed(torch.tensor(ids), torch.tensor(offsets))), dim=1)


def _pairs(split: Split) -> tuple[list[int], list[str]]:
    images, captions = [], []
    for i, sample in enumerate(split.samples):
        for caption in sample.captions:
            images.append(i)
            captions.append(caption)
    if not captions:
        raise InvalidInput(f"{split.where}: split {split.name!r} has no captions")
    return images, captions


def run_retrieval(ckpt: Checkpoint, train: Split, val: Split, settings: Settings) -> dict[str, float]:
    val_img, val_cap = _pairs(val)
    unique = sorted(set(val_cap))
    if ckpt.dual_encoder is not None:
        sim = text_tower_similarity(ckpt, val, unique, settings)
    else:
        sim = _learnt_tower_similarity(ckpt, train, val, unique, settings)
    position = {c: j for j, c in enumerate(unique)}
    relevant = torch.zeros(len(val.samples), len(unique), dtype=torch.bool)
    for i, c in zip(val_img, val_cap, strict=True):
        relevant[i, position[c]] = True
    scores = {}
    for k in sorted({1, 5, settings.k}):
        i2t = recall_at_k(sim, relevant, k)
        t2i = recall_at_k(sim.T, relevant.T, k)
        scores[f"recall@{k}"] = (i2t + t2i) / 2
    return scores


def _learnt_tower_similarity(
    ckpt: Checkpoint, train: Split, val: Split, captions: list[str], settings: Settings
) -> Tensor:
    """[val images, captions] similarities under a text tower trained here on `train` (LiT)."""
    train_x, val_x = pooled_features(ckpt, train, settings), pooled_features(ckpt, val, settings)
    train_img, train_cap = _pairs(train)
    vocab: dict[str, int] = {}
    for caption in train_cap:
        for w in _words(caption):
            vocab.setdefault(w, len(vocab) + 1)

    torch.manual_seed(settings.seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    image_proj = nn.Linear(train_x.shape[1], EMBED_DIM)
    text = TextTower(vocab)
    params = [*image_proj.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    steps = max(1, settings.epochs * math.ceil(len(train_cap) / settings.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    img_idx = torch.tensor(train_img)

    def embed_images(x: Tensor) -> Tensor:
        return F.normalize(image_proj((x - mean) / std), dim=1)

    for _ in range(settings.epochs):
        for batch in torch.randperm(len(train_cap)).split(settings.batch_size):
            zi = embed_images(train_x[img_idx[batch]])
            zt = text.encode([train_cap[j] for j in batch.tolist()])
            logits = zi @ zt.T / TEMPERATURE
            # Pairs of the same image or the same caption text are positives of each other (soft targets).
            ids = batch.tolist()
            same = torch.tensor(
                [[train_img[a] == train_img[b] or train_cap[a] == train_cap[b] for b in ids] for a in ids]
            ).float()
            target = same / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    with torch.no_grad():
        return embed_images(val_x) @ text.encode(captions).T
