"""The VLP dual encoder: an image backbone and a text transformer built from config, projected into one space.

The text tower is transformers' `CLIPTextModel` built from a `CLIPTextConfig` (never downloaded) over an offline
tokenizer: `toy://shapesbench`, a word-level tokenizer over both ShapesBench vocabularies, or a `tokenizer.json`
in a file:// or pvc:// directory. Image side: the pooled backbone feature gives the global embedding, each cell
of the dense map its own embedding through the same projection, so a phrase can be compared with every cell
(phrase grounding) or with the features pooled inside an object's mask (region–phrase alignment). See
docs/architecture.md#the-method.

A VLP job exports the backbone exactly as the other frameworks do (every evaluation loads it as an image
backbone) plus `export/text_tower.pt` (the text model and both projections), covered by the export's sha256s,
and `textTower` in metadata.json: the tokenizer's name and the tower's sizes.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from freeatm.api.pretrain_job import SHAPESBENCH_TOKENIZER

from .backbones import Backbone, load_export, read_export_file, save_export, state_dict_bytes
from .errors import InvalidInput
from .pretrain.contrastive import MAX_OBJECTS, MIN_OBJECT_AREA, cell_weights
from .storage import local_path

TEXT_TOWER_FILE = "text_tower.pt"
_TEXT_PREFIXES = ("text_model.", "image_projection.", "text_projection.")


def build_text_tokenizer(name: str = SHAPESBENCH_TOKENIZER) -> PreTrainedTokenizerFast:
    """The text tower's tokenizer: `toy://shapesbench` (word level over every ShapesBench caption word, stable
    ids), or the `tokenizer.json` (with its tokenizer_config.json, if any) of a file:// or pvc:// directory."""
    if name == SHAPESBENCH_TOKENIZER:
        from .toy.tokenizer import shapesbench_tokenizer

        return shapesbench_tokenizer()
    path = local_path(name) if name.startswith(("file://", "pvc://")) else None
    if path is None:
        raise InvalidInput(
            f"text tokenizer {name!r}: use {SHAPESBENCH_TOKENIZER} or a file:// or pvc:// directory holding a "
            "tokenizer.json"
        )
    if not (path / "tokenizer.json").is_file():
        raise InvalidInput(f"text tokenizer {name}: {path / 'tokenizer.json'} does not exist")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise InvalidInput(
            f"text tokenizer {name}: its tokenizer_config.json must name a pad and an eos token"
        )
    if tokenizer.model_max_length > 512:  # transformers' "no limit" sentinel is huge
        raise InvalidInput(
            f"text tokenizer {name}: its tokenizer_config.json must set model_max_length ≤ 512"
        )
    return tokenizer


def tokenize(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) padded to L = the tokenizer's model_max_length; InvalidInput
    naming a prompt with words the vocabulary cannot encode, or longer than L tokens."""
    length = tokenizer.model_max_length
    enc = tokenizer(prompts, padding="max_length", max_length=length, return_offsets_mapping=True)
    unk = tokenizer.unk_token_id
    for prompt, ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"], strict=True):
        if len(ids) > length:
            raise InvalidInput(
                f"prompt {prompt!r} is {len(ids)} tokens long; the text tower encodes at most {length}"
            )
        unknown = [
            prompt[s:e] for i, (s, e) in zip(ids, offsets, strict=True) if unk is not None and i == unk
        ]
        if unknown:
            raise InvalidInput(
                f"the text tokenizer cannot encode {', '.join(map(repr, unknown))} of prompt {prompt!r}"
            )
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    return ids, torch.tensor(enc["attention_mask"], dtype=torch.long)


def phrase_mask(tokenizer: PreTrainedTokenizerFast, prompt: str, objects: list[dict[str, Any]]) -> Tensor:
    """Bool [MAX_OBJECTS, L]: row k-1 marks the tokens of object k's phrase (its `modifiers` and `word`, from the
    sample's `objects` records, `label` k) in this tokenizer's encoding of `prompt`.

    Words are found through the fast tokenizer's offset mapping: the k-th record whose word is w takes the k-th
    occurrence of w, each modifier the nearest occurrence before it. The records' `tokenIndices` index the
    generator's tokenizer, which may differ from the text tower's, so they are not used. InvalidInput names a
    word the prompt does not contain."""
    enc = tokenizer(prompt, padding="max_length", return_offsets_mapping=True)
    if len(enc["input_ids"]) > tokenizer.model_max_length:
        raise InvalidInput(
            f"prompt {prompt!r} is {len(enc['input_ids'])} tokens long; the text tower encodes at most "
            f"{tokenizer.model_max_length}"
        )
    words: list[tuple[str, int]] = []  # (lower-cased word, token position), in prompt order
    for pos, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start:
            words.append((prompt[start:end].lower(), pos))
    mask = torch.zeros(MAX_OBJECTS, tokenizer.model_max_length, dtype=torch.bool)
    seen: dict[str, int] = {}
    for k, record in enumerate(objects, start=1):
        word = str(record.get("word", "")).lower()
        label = int(record.get("label", k))
        occurrences = [i for i, (w, _) in enumerate(words) if w == word]
        nth = seen.get(word, 0)
        seen[word] = nth + 1
        if nth >= len(occurrences):
            raise InvalidInput(f"prompt {prompt!r} has no occurrence {nth + 1} of object word {word!r}")
        at = occurrences[nth]
        positions = [words[at][1]]
        for modifier in record.get("modifiers") or []:
            before = [i for i in range(at) if words[i][0] == str(modifier).lower()]
            if not before:
                raise InvalidInput(
                    f"prompt {prompt!r} has no modifier {modifier!r} before object word {word!r}"
                )
            positions.append(words[before[-1]][1])
        if 1 <= label <= MAX_OBJECTS:
            mask[label - 1, positions] = True
    return mask


class DualEncoder(nn.Module):
    """Image backbone + CLIP text transformer, each with a linear projection into an `embed_dim` space."""

    def __init__(
        self,
        backbone: Backbone,
        tokenizer: PreTrainedTokenizerFast,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = {"width": width, "layers": layers, "heads": heads, "embedDim": embed_dim}
        self.text_model = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=4 * width,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                max_position_embeddings=tokenizer.model_max_length,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        self.image_projection = nn.Linear(backbone.feature_dim, embed_dim)
        self.text_projection = nn.Linear(width, embed_dim)

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(global [B, E] L2-normalised, dense [B, E, h, w] projected per cell, not normalised)."""
        features = self.backbone.forward_features(images)
        dense = self.image_projection(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        pooled = self.image_projection(features.mean(dim=(2, 3)))
        return F.normalize(pooled, dim=-1), dense

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(global [B, E] L2-normalised from the EOS token's state, token states [B, L, E], not normalised)."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = self.text_projection(out.pooler_output)
        return F.normalize(pooled, dim=-1), self.text_projection(out.last_hidden_state)

    @staticmethod
    def phrase_embeddings(token_states: Tensor, phrase_mask: Tensor) -> Tensor:
        """[B, K, E]: the mean of each phrase's token states, L2-normalised; zeros for an empty mask."""
        weights = phrase_mask.to(token_states.dtype)
        summed = torch.bmm(weights, token_states)
        return F.normalize(summed / weights.sum(dim=2, keepdim=True).clamp(min=1), dim=-1)

    @staticmethod
    def region_embeddings(dense: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """([B, K, E] the dense cells inside each object's mask averaged by coverage, L2-normalised; [B, K] bool:
        the object covers at least MIN_OBJECT_AREA cells)."""
        weights = cell_weights(labels, (dense.shape[2], dense.shape[3])).to(dense.dtype)
        area = weights.sum(dim=2)
        pooled = torch.bmm(weights, dense.flatten(2).transpose(1, 2))
        return F.normalize(pooled, dim=-1), area >= MIN_OBJECT_AREA


def has_text_tower(metadata: dict[str, Any]) -> bool:
    """Whether the export that `metadata` describes carries a text tower (was trained with framework vlp)."""
    return isinstance(metadata.get("textTower"), dict)


def save_vlp_export(
    model: DualEncoder, tokenizer_name: str, metadata: dict[str, Any], output_uri: str
) -> str:
    """Export the backbone as backbones.save_export does, plus the text tower and both projections
    (export/text_tower.pt) and `textTower` (tokenizer name, sizes) in the metadata; return the weights URI."""
    meta = {**metadata, "textTower": {"tokenizer": tokenizer_name, **model.config}}
    text = state_dict_bytes(model, _TEXT_PREFIXES)
    return save_export(model.backbone, meta, output_uri, {TEXT_TOWER_FILE: text})


def load_vlp_export(uri: str) -> tuple[DualEncoder, dict[str, Any]]:
    """The dual encoder exported under `uri`, in eval mode, and its metadata; InvalidInput when the export has no
    text tower or a file is missing or corrupt."""
    backbone, meta = load_export(uri)
    if not has_text_tower(meta):
        raise InvalidInput(
            f"checkpoint {uri} has no text tower: it was not trained with method.framework vlp"
        )
    tower = meta["textTower"]
    tokenizer = build_text_tokenizer(str(tower.get("tokenizer")))
    try:
        model = DualEncoder(
            backbone,
            tokenizer,
            width=int(tower["width"]),
            layers=int(tower["layers"]),
            heads=int(tower["heads"]),
            embed_dim=int(tower["embedDim"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"checkpoint {uri}: textTower {tower!r} does not describe a text tower") from e
    data = read_export_file(uri, TEXT_TOWER_FILE, meta)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=False)
        missing = {k for k in model.state_dict() if k.startswith(_TEXT_PREFIXES)} - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)[0]}")
    except Exception as e:  # a file that does not fit this tower (or does not unpickle) is the input's fault
        raise InvalidInput(
            f"checkpoint {uri}: {TEXT_TOWER_FILE} does not fit its textTower {tower}: {e}"
        ) from e
    model.eval()
    return model, meta
