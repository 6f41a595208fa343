"""Attention capture on the diffusion transformers: SD3 (``SD3Transformer2DModel``) and FLUX
(``FluxTransformer2DModel``).

These models have no separate cross-attention: in every block the image tokens and the text tokens attend
jointly (MMDiT), over one sequence of keys, image and text. A word's map is the **image-query × text-key
block** of that attention: the softmax is taken over the whole joint sequence of keys, as the model takes it,
and the columns of the word's text positions are kept for the image rows. Aggregation is :mod:`.capture`'s
(``mean``: head average, running sums over the captured (block, step) pairs); every block works on the same
r × r token grid (the latent divided by the patch size, 2), so there is one resolution.

Blocks are selected by index (``attention.blocks``, an inclusive range), not by resolution:

* **SD3** — block i is ``transformer_blocks[i]``; its ``attn`` is the joint attention (SD3.5's extra ``attn2``
  is image-only self-attention and is never captured). The joint sequence is ``[image (r²), CLIP (77),
  T5]``. Default: every block.
* **FLUX** — blocks 0 … D−1 are the D joint ("double-stream") blocks ``transformer_blocks``, blocks D … D+S−1
  the S single-stream blocks ``single_transformer_blocks`` (the text and image tokens concatenated into one
  stream); the sequence is ``[T5 text, image (r²)]`` in both. Default: the joint blocks, where text keys come
  from the text stream's own projections, so a column is a word's key and nothing else; the single-stream
  blocks carry the same kind of signal and can be added with ``blocks``. Which range gives the best masks on
  the real weights has not been measured in this project.

Each captured block gets a processor that computes its output exactly as the block's default processor does
(``JointAttnProcessor2_0`` for SD3, ``FluxAttnProcessor`` for FLUX, including FLUX's attention backend
dispatch), so images are identical with and without capture. The kept probabilities come out of that same
attention call (:meth:`.AttentionStore.attend_with_selectors`: the values extended with one-hot columns of the
object keys, the queries and keys zero-padded to the same head size), so capture adds no attention pass; a
FLUX block whose attention backend is not torch's fused SDPA (or that runs context-parallel) keeps its call
as it is and computes the probabilities with one more call (:meth:`.AttentionStore.object_probabilities`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    dispatch_attention_fn,
)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections

from .capture import AttentionStore, InstalledCapture

_SDPA_BACKENDS = {
    AttentionBackendName.NATIVE,
    AttentionBackendName._NATIVE_FLASH,
    AttentionBackendName._NATIVE_EFFICIENT,
}
"""FLUX attention backends that take the selector columns in the block's own call (torch's fused SDPA)."""


def block_names(transformer: Any) -> list[str]:
    """The processor name of each block's joint attention, in block-index order (see the module docstring)."""
    names = [f"transformer_blocks.{i}.attn.processor" for i in range(len(transformer.transformer_blocks))]
    singles = getattr(transformer, "single_transformer_blocks", None) or []
    return names + [f"single_transformer_blocks.{i}.attn.processor" for i in range(len(singles))]


def default_blocks(transformer: Any) -> tuple[int, int]:
    """Every joint block: SD3's blocks, FLUX's double-stream blocks."""
    return 0, len(transformer.transformer_blocks) - 1


def select_blocks(transformer: Any, blocks: tuple[int, int] | None) -> list[str]:
    """The processor names of blocks `blocks` = (first, last), inclusive; ValueError when out of range."""
    names = block_names(transformer)
    first, last = default_blocks(transformer) if blocks is None else blocks
    if not 0 <= first <= last < len(names):
        raise ValueError(
            f"block range [{first}, {last}] is outside the {len(names)} blocks (0–{len(names) - 1}) of this "
            f"{type(transformer).__name__}"
        )
    return names[first : last + 1]


class _TokenGrid:
    """What a joint processor shares: the store and the r × r image-token grid of the captured call."""

    def __init__(self, store: AttentionStore, grid: int, name: str) -> None:
        self.store, self.grid, self.name = store, grid, name

    def image_tokens(self, count: int) -> int:
        if count != self.grid * self.grid:
            raise RuntimeError(
                f"captured block expected a {self.grid}x{self.grid} token grid, got {count} image tokens "
                "(non-square images are not supported by capture)"
            )
        return count

    def attend_capturing(
        self,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice, float | None], torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        image: slice,
        text_offset: int,
        heads_dim: int,
    ) -> torch.Tensor:
        """The block's attention output, the kept probabilities added to the store on the way
        (:meth:`AttentionStore.attend_with_selectors`: no extra attention call)."""
        out, kept = self.store.attend_with_selectors(attend, query, key, value, image, text_offset, heads_dim)
        self.store.add_cross(self.name, self.grid, kept)
        return out

    @torch.no_grad()
    def capture(self, query: torch.Tensor, key: torch.Tensor, image: slice, text_offset: int) -> None:
        """An extra attention call for the kept probabilities (:meth:`AttentionStore.object_probabilities`);
        query/key B × heads × L × d of the joint sequence; `image` the image rows; text at `text_offset`."""
        store = self.store
        q = store.conditional(query)[:, :, image]
        k = store.conditional(key)
        kept = store.object_probabilities(q, k, query.shape[-1] ** -0.5, offset=text_offset)
        store.add_cross(self.name, self.grid, kept)


class SD3CaptureProcessor(_TokenGrid):
    """``JointAttnProcessor2_0`` (SD3's joint attention) plus capture of the image × text block."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        residual = hidden_states
        batch_size = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if encoder_hidden_states is not None:
            context_query = attn.add_q_proj(encoder_hidden_states)
            context_key = attn.add_k_proj(encoder_hidden_states)
            context_value = attn.add_v_proj(encoder_hidden_states)
            context_query = context_query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            context_key = context_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            context_value = context_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                context_query = attn.norm_added_q(context_query)
            if attn.norm_added_k is not None:
                context_key = attn.norm_added_k(context_key)
            query = torch.cat([query, context_query], dim=2)
            key = torch.cat([key, context_key], dim=2)
            value = torch.cat([value, context_value], dim=2)

        if self.store.active and encoder_hidden_states is not None:
            n = self.image_tokens(residual.shape[1])
            hidden_states = self.attend_capturing(_sdpa, query, key, value, slice(0, n), n, heads_dim=1)
        else:
            hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class FluxCaptureProcessor(_TokenGrid):
    """``FluxAttnProcessor`` (FLUX's joint and single-stream attention) plus capture of the image × text
    block.

    The attention backend and parallel config of the processor it replaces are kept (``_attention_backend``,
    ``_parallel_config``), so the output goes through the same ``dispatch_attention_fn`` call."""

    def __init__(self, store: AttentionStore, grid: int, name: str, replaced: Any) -> None:
        super().__init__(store, grid, name)
        self._attention_backend = getattr(replaced, "_attention_backend", None)
        self._parallel_config = getattr(replaced, "_parallel_config", None)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> Any:
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        def attend(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice, scale: float | None
        ) -> Any:
            mask = attention_mask
            if mask is not None and mask.shape[0] == query.shape[0]:
                mask = mask[rows]
            return dispatch_attention_fn(
                q, k, v, attn_mask=mask, scale=scale, backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )  # fmt: skip

        everything = slice(0, query.shape[0])
        if self.store.active:
            # joint blocks: [text, image] built above; single-stream blocks: the block concatenated them
            text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else None
            count = self.image_tokens(query.shape[1] - text if text is not None else self.grid * self.grid)
            image = slice(query.shape[1] - count, None)
            if self._selectors_fit():
                hidden_states = self.attend_capturing(attend, query, key, value, image, 0, heads_dim=2)
            else:
                self.capture(query.transpose(1, 2), key.transpose(1, 2), image, text_offset=0)
                hidden_states = attend(query, key, value, everything, None)
        else:
            hidden_states = attend(query, key, value, everything, None)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]],
                dim=1,
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def _selectors_fit(self) -> bool:
        """Whether the block's attention takes the padded head size of the selector columns: torch's SDPA
        does; other backends may accept only some head sizes (SageAttention: 64 or 128) and get the extra
        call instead, as does a context-parallel config."""
        backend = self._attention_backend or _AttentionBackendRegistry.get_active_backend()[0]
        return self._parallel_config is None and AttentionBackendName(backend) in _SDPA_BACKENDS


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice, scale: float | None
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False, scale=scale)


class TransformerCapture(InstalledCapture):
    """Capture on an SD3 or FLUX transformer: ``TransformerCapture(transformer, store, grid, blocks, steps)``
    installs a capture processor on the joint attention of blocks `blocks` (None: :func:`default_blocks`);
    `grid` is the side of the image-token grid (latent size / 2)."""

    def __init__(
        self,
        transformer: Any,
        store: AttentionStore,
        grid: int,
        blocks: tuple[int, int] | None,
        scheduler_steps: Callable[[], int],
    ) -> None:
        if store.aggregation != "mean" or store.self_attention:
            raise ValueError("transformer capture aggregates with mean and has no self-attention refinement")
        self.layers = select_blocks(transformer, blocks)
        flux = hasattr(transformer, "single_transformer_blocks")
        current = transformer.attn_processors
        processors = {
            name: FluxCaptureProcessor(store, grid, name, current[name])
            if flux
            else SD3CaptureProcessor(store, grid, name)
            for name in self.layers
        }
        super().__init__(transformer, store, processors, scheduler_steps)
