"""Vision–language pretraining (CLIP-style), plus the Free-ATM region–phrase term, each behind its switch.

Global term (`imageTextLoss`, CLIP, Radford et al. 2021): the pooled image embedding and the caption's EOS
embedding of the same sample are a positive pair; the symmetric InfoNCE contrasts each with every other caption
(image) of the global batch (embeddings are gathered across ranks with gradients), at `temperature`.

Region–phrase term (the `regionPhraseAlignment` fix, after GLIP/RegionCLIP's region–word alignment): the dense
image embeddings are pooled inside each object's mask (the label map went through the same crop and flip as the
image) and contrasted with the embedding of each object's phrase (its word and modifiers,
`dual_encoder.phrase_mask`) — every other phrase of the process's batch a negative, except phrases with the
same tokens ("red circle" in two captions), which count as positives too (multi-positive InfoNCE, symmetric).
Object counts differ between ranks, so, like contrastive.py's object term, it is not gathered. With the switch
off the term is not computed, and the model computes exactly the global term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from ..backbones import Backbone
from ..dual_encoder import DualEncoder
from .distributed import gather_with_grad


def clip_loss(images: Tensor, texts: Tensor, temperature: float, gather: bool = True) -> Tensor:
    """Symmetric InfoNCE between L2-normalised image and text embeddings [B, E]: pair i is the positive."""
    if gather:
        images, texts = gather_with_grad(images), gather_with_grad(texts)
    logits = images @ texts.t() / temperature
    targets = torch.arange(images.shape[0], device=images.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def multi_positive_nce(regions: Tensor, phrases: Tensor, same: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between regions [N, E] and phrases [N, E] (row i of each belongs to object i), where
    `same` [N, N] marks the pairs that count as positives (the diagonal and identical phrases): each row's loss
    is -log(Σ positives / Σ all) of its softmax."""
    logits = regions @ phrases.t() / temperature
    total = 0.0
    for lg in (logits, logits.t()):
        log_prob = lg.log_softmax(dim=1)
        total = total - torch.logsumexp(log_prob.masked_fill(~same, float("-inf")), dim=1).mean()
    return total / 2


def phrase_keys(input_ids: Tensor, phrase_mask: Tensor) -> Tensor:
    """[B, K, L]: each phrase's token ids, sorted, -1 elsewhere; equal rows are the same phrase wherever it
    stands in its caption."""
    ids = input_ids[:, None, :].expand(-1, phrase_mask.shape[1], -1)
    return torch.where(phrase_mask, ids, -1).sort(dim=-1).values


class VLPModel(DualEncoder):
    """DualEncoder trained by `forward(batch)` → (loss, parts), like the other frameworks' models."""

    def __init__(
        self,
        backbone: Backbone,
        tokenizer: PreTrainedTokenizerFast,
        *,
        temperature: float = 0.2,
        image_text_loss: bool = True,
        region_phrase: bool = False,
        phrase_temperature: float = 0.07,
        phrase_loss_weight: float = 1.0,
        gather: bool = True,
        **tower: int,
    ) -> None:
        """`tower`: the text tower's sizes (`DualEncoder`'s width, layers, heads, embed_dim)."""
        super().__init__(backbone, tokenizer, **tower)
        self.temperature = temperature
        self.image_text_loss = image_text_loss
        self.region_phrase = region_phrase
        self.phrase_temperature = phrase_temperature
        self.phrase_loss_weight = phrase_loss_weight
        self.gather = gather

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images, dense = self.encode_image(batch["image"])
        texts, states = self.encode_text(batch["input_ids"], batch["attention_mask"])
        parts: dict[str, float] = {}
        terms: list[Tensor] = []  # the API refuses a job with neither term
        if self.image_text_loss:
            image_text = clip_loss(images, texts, self.temperature, self.gather)
            parts["imageTextLoss"] = float(image_text.detach())
            terms.append(image_text)
        if self.region_phrase:
            phrase_loss = self._region_phrase(dense, states, batch)
            parts["regionPhraseLoss"] = float(phrase_loss.detach())
            terms.append(self.phrase_loss_weight * phrase_loss)
        return sum(terms[1:], terms[0]), parts

    def _region_phrase(self, dense: Tensor, states: Tensor, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["phrase_mask"]
        phrases = self.phrase_embeddings(states, mask)
        regions, seen = self.region_embeddings(dense, batch["mask"])
        valid = seen & mask.any(dim=2)  # [B, K]: named in the caption and visible in the crop
        n = int(valid.sum())
        if n >= 2:
            keys = phrase_keys(batch["input_ids"], mask)[valid]
            same = (keys[:, None, :] == keys[None, :, :]).all(dim=2)
            return multi_positive_nce(regions[valid], phrases[valid], same, self.phrase_temperature)
        # nothing to contrast in this batch; keep the graph so every rank reduces the same gradients
        return regions.sum() * 0.0 + phrases.sum() * 0.0
