"""Attention capture on UNet pipelines (SD 1.x/2.x, SDXL, the toy model), and the store every family feeds.

Capture is a set of diffusers attention processors installed on the selected layers only, each computing its
output exactly as the layer's default processor does and, beside it, the probabilities of the object-word
columns, aggregated on the fly by an :class:`AttentionStore`. This module holds the store, the UNet processor
and its layer selection; :mod:`.capture_mmdit` holds the SD3 and FLUX processors.

How the soft map of a token is aggregated (``attention.aggregation: mean``, the default)
------------------------------------------------------------------------------------------
Let the pipeline run N denoising steps (one denoiser call per step) on a batch of B prompts. For every
captured layer ℓ — on a UNet a cross-attention ("attn2") layer whose feature map is r_ℓ × r_ℓ with r_ℓ in
``attention.resolutions``; on a transformer a block in ``attention.blocks``, whose r × r image tokens attend
jointly with the text tokens (:mod:`.capture_mmdit`) — and every captured step s:

1. **Probabilities.** P = softmax(Q Kᵀ / √d) with the layer's own (normalised) queries Q of the image
   positions (r_ℓ² of them) and its keys K (the text tokens on a UNet; the whole joint sequence, image and
   text, on a transformer), d the head size, for the *conditional* rows of the batch only (with
   classifier-free guidance the batch is [unconditional, conditional] and only the second half is used;
   without guidance the whole batch is conditional). The attention mask, if any, is applied as in the layer.
   They are computed by the fused attention kernel in the layer's dtype and summed in float32: on a UNet by
   one more call with one-hot values (:meth:`AttentionStore.object_probabilities`), on a transformer by the
   block's own call, its values extended with the one-hot columns
   (:meth:`AttentionStore.attend_with_selectors`).
2. **Tokens.** Only the columns of the tokens that belong to object words (and their modifiers) are kept,
   J ≤ T columns per sample (:mod:`.prompts` maps words to positions in the text sequence); everything else
   is dropped before it is stored.
3. **Heads.** The kept columns are averaged over the layer's heads: A_{ℓ,s} = mean_h P_h, r_ℓ² × J.
4. **Running sums.** A_{ℓ,s} is added to the running sum S_r of its resolution r = r_ℓ, and the count n_r
   is incremented. Nothing per-step is kept: memory is B × J × r² floats per resolution.
5. **Timestep window.** Step s (0-based) is captured when its centre (s + ½) / N lies in
   ``attention.timesteps`` = [a, b] (0 = first, noisiest step; 1 = last step). When no step centre falls in
   the window, the step whose centre is nearest to it is captured, so a window never captures nothing.
6. **Combination.** At the end, every resolution's sum is upsampled bilinearly (align_corners=False) to the
   common resolution R = max(resolutions) and the maps are averaged over every captured (layer, step) pair:
   M = Σ_r up_R(S_r) / Σ_r n_r. Because upsampling is linear this equals upsampling each A_{ℓ,s} first and
   averaging them all with equal weight (the prompt-to-prompt AttentionStore average). It is *not* DAAM's
   aggregation, which upsamples bicubically, clamps, weights every head equally and hooks a different layer
   set; ``aggregation: daam`` reproduces that one (below).
7. **Self-attention refinement** (``attention.selfAttentionRefinement``, Dataset Diffusion; UNets only): the
   self-attention ("attn1") layers of the same transformer blocks are captured the same way (steps 1, 2, 4, 5;
   all r² key positions kept), giving the average self-attention Ā_r (r² × r²) per resolution, and each
   resolution's mean cross-attention map is propagated through it before step 6:
   M_r ← (Ā_r)^τ (S_r / n_r), τ = :data:`REFINEMENT_POWER`; the combination then weights M_r by n_r.

``aggregation: daam`` — DAAM's global heat map (castorini/daam, ``daam/trace.py`` and ``daam/heatmap.py``)
-------------------------------------------------------------------------------------------------------------
For a UNet pipeline (exact for SD 1.x/2.x, where DAAM was defined) the store reproduces DAAM's
``compute_global_heat_map()`` (default arguments: every factor, layer and head, ``normalize=False``):

* **Layers** — DAAM's ``UNetCrossAttentionLocator`` without ``low_memory``: the "attn2" layer of every
  transformer block of every cross-attention block of ``down_blocks`` and ``up_blocks``; not the mid block,
  and not a layer whose feature map is latent/8 on a side (DAAM skips its factor 8). ``attention.resolutions``
  is not used.
* **Per step** — each layer's softmax(Q Kᵀ · scale) of the conditional rows, per head (no head average), for
  the kept columns, added to a running sum per (layer, head): DAAM sums over every step (its maps are sums
  over time, not means; with the default ``timesteps`` [0, 1] every step is captured, as in DAAM).
* **Combination** — each (layer, head) sum, r × r per token, is upsampled *bicubically* (align_corners=False)
  to the latent size (DAAM's fixed 64 for a 512-px model, i.e. the latent of its native resolution), clamped
  at 0 ("fixes undershoot"), and the result is the plain mean over all (layer, head) pairs: every head weighs
  the same, so a layer with more heads weighs more.
* A word's map is then the mean of its tokens' maps, as DAAM's ``compute_word_heat_map`` does
  (:func:`freeatm.runtime.generate.masks.object_maps`).

Not reproduced: DAAM handles one prompt per call (the store takes a batch), and what follows the heat map —
DAAM's bicubic ``expand_as`` to the image and its threshold — is :mod:`.masks`' resize and threshold here.

The result is ``AttentionStore.maps()``: B × J × R × R token maps (R = max(resolutions), the transformer's
token grid, or the latent size under ``daam``), turned into per-object masks by
:mod:`freeatm.runtime.generate.masks`.

Every layer that is not captured keeps the processor it had (diffusers' fast SDPA processor by default); a
captured UNet layer computes its output exactly as diffusers' ``AttnProcessor2_0`` does (the same operations
on the same tensors), so images are identical with and without capture.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

REFINEMENT_POWER = 4
"""τ of the self-attention refinement: the cross-attention map is propagated τ times through Ā."""
AGGREGATIONS = ("mean", "daam")

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")
_DAAM_LAYER = re.compile(r"^(down_blocks|up_blocks)\.\d+\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.")


class AttentionStore:
    """Running sums of the captured attention maps of one pipeline call (see the module docstring).

    Lifecycle: :meth:`begin` before a pipeline call (batch size, classifier-free guidance, token columns),
    :meth:`next_step` at every denoiser call (a forward pre-hook), the processors' :meth:`add_cross` /
    :meth:`add_self` while a step is :attr:`active`, :meth:`maps` after the call. ``aggregation="daam"``
    needs `latent_size`, the size DAAM upsamples to.
    """

    def __init__(
        self,
        resolutions: list[int],
        window: tuple[float, float],
        self_attention: bool = False,
        aggregation: str = "mean",
        latent_size: int | None = None,
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        if aggregation == "daam" and (latent_size is None or self_attention):
            raise ValueError("the daam aggregation needs the latent size and no self-attention refinement")
        self.resolutions = sorted(set(resolutions))
        self.window = window
        self.self_attention = self_attention
        self.aggregation = aggregation
        self.latent_size = latent_size
        self.armed = False
        self.active = False
        self.batch_size = 0
        self.cfg = False
        self.columns: torch.Tensor | None = None
        self.step = -1
        self.steps_done: list[int] = []
        self.cross: dict[int, torch.Tensor] = {}
        self.cross_count: dict[int, int] = {}
        self.per_head: dict[str, torch.Tensor] = {}
        self.selfs: dict[int, torch.Tensor] = {}
        self.self_count: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------
    def begin(self, batch_size: int, cfg: bool, columns: torch.Tensor) -> None:
        """Arm the store for one pipeline call; `columns` (B × J, long) are the text positions to keep.

        `columns` must be on the denoiser's device: moving them in every captured layer would block on a
        GPU."""
        self.armed, self.active = True, False
        self.batch_size, self.cfg = batch_size, cfg
        self.columns = columns
        self.step = -1
        self.steps_done = []
        self.cross, self.cross_count, self.selfs, self.self_count = {}, {}, {}, {}
        self.per_head = {}

    def end(self) -> None:
        self.armed = self.active = False

    def next_step(self, total_steps: int) -> None:
        """Called once per denoiser call: advance the step counter and decide whether this step is
        captured."""
        if not self.armed:
            return
        self.step += 1
        self.active = self.step in captured_steps(total_steps, self.window)
        if self.active:
            self.steps_done.append(self.step)

    def conditional(self, x: torch.Tensor) -> torch.Tensor:
        """The conditional rows of a batch: the last `batch_size` (the second half under guidance)."""
        if x.shape[0] not in (self.batch_size, 2 * self.batch_size):
            raise RuntimeError(
                f"attention batch {x.shape[0]} does not match the armed batch size {self.batch_size}"
            )
        return x[-self.batch_size :]

    # -- accumulation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def object_probabilities(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: float,
        offset: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """B × heads × N × J: the probabilities softmax(query keyᵀ · scale [+ mask]) over all keys, at the
        columns ``offset + columns`` (the text positions' place among the keys); query B × heads × N × d and
        key B × heads × L × d are already the conditional rows.

        They are computed by the fused attention kernel with one-hot values: attending to a value that is 1 at
        key j and 0 elsewhere returns the probability of key j, so the N × L matrix is never materialised and
        the cost is about one more attention call of the layer (values padded to the head size, the shape the
        kernels are fastest for)."""
        assert self.columns is not None
        b, heads, _, d = query.shape
        j = self.columns.shape[1]
        selectors = F.one_hot(self.columns + offset, key.shape[2]).transpose(1, 2)  # B × L × J
        values = torch.zeros((b, heads, key.shape[2], max(j, d)), dtype=query.dtype, device=query.device)
        values[..., :j] = selectors[:, None].to(query.dtype)
        probs = F.scaled_dot_product_attention(query, key, values, attn_mask=mask, scale=scale)
        return probs[..., :j].float()

    def attend_with_selectors(
        self,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice, float | None], torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        image: slice,
        offset: int,
        heads_dim: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the layer's attention output, B × heads × N × J probabilities of the object keys for the image
        rows `image` of the conditional batch rows) from the layer's own attention call.

        query/key/value are B × … × d with the heads at `heads_dim` (1 or 2) and the sequence at the other;
        the object keys are at ``offset + columns``. ``attend(q, k, v, rows, scale)`` is the layer's attention
        on batch rows `rows`. The conditional rows are attended with q and k zero-padded and v extended to
        d' = d + J rounded up to a multiple of 8, v's extra columns being the one-hot selectors of the object
        keys: the zeros leave the scores unchanged (the scale stays 1/√d) and softmax does not depend on v, so
        the output's first d columns are the layer's and the next J the probabilities of the object keys.
        q, k and v keep one head size because the fused kernels (CPU and CUDA flash) require it; the
        unconditional rows (under guidance) are attended unchanged."""
        assert self.columns is not None
        b, d = query.shape[0], query.shape[-1]
        j = self.columns.shape[1]
        padded = -(-(d + j) // 8) * 8
        cond = slice(b - self.batch_size, b)
        selectors = F.one_hot(self.columns + offset, key.shape[3 - heads_dim]).transpose(1, 2)  # B × L × J
        shape = (self.batch_size, *value.shape[1:-1], padded - d)
        extra = torch.zeros(shape, dtype=value.dtype, device=value.device)
        extra[..., :j] = selectors.unsqueeze(heads_dim).to(value.dtype)
        out = attend(
            F.pad(query[cond], (0, padded - d)),
            F.pad(key[cond], (0, padded - d)),
            torch.cat([value[cond], extra], dim=-1),
            cond,
            1 / math.sqrt(d),
        )
        kept = out[:, :, image, d : d + j] if heads_dim == 1 else out[:, image, :, d : d + j].transpose(1, 2)
        out = out[..., :d]
        if cond.start > 0:
            rest = slice(0, cond.start)
            out = torch.cat([attend(query[rest], key[rest], value[rest], rest, None), out])
        return out, kept.float()

    def add_cross(self, layer: str, resolution: int, kept: torch.Tensor) -> None:
        """Add the kept probabilities `kept` (B × heads × r² × J, conditional rows) of `layer`."""
        if self.aggregation == "daam":
            if layer in self.per_head:
                self.per_head[layer] += kept
            else:
                self.per_head[layer] = kept.clone()
            return
        mean = kept.mean(dim=1)  # B × r² × J
        if resolution in self.cross:
            self.cross[resolution] += mean
            self.cross_count[resolution] += 1
        else:
            self.cross[resolution] = mean
            self.cross_count[resolution] = 1

    def add_self(self, resolution: int, probs: torch.Tensor) -> None:
        """Add head-averaged self-attention `probs` (B × heads × r² × r², conditional rows)."""
        mean = probs.mean(dim=1)
        if resolution in self.selfs:
            self.selfs[resolution] += mean
            self.self_count[resolution] += 1
        else:
            self.selfs[resolution] = mean.clone()
            self.self_count[resolution] = 1

    # -- result ----------------------------------------------------------------------------------------------
    def maps(self) -> torch.Tensor:
        """B × J × R × R token maps, aggregated as the module docstring defines."""
        if not self.cross and not self.per_head:
            raise RuntimeError(
                "no cross-attention was captured: no selected layer ran during a captured step"
            )
        return self._daam_maps() if self.aggregation == "daam" else self._mean_maps()

    def _mean_maps(self) -> torch.Tensor:
        common = max(self.cross)
        total = sum(self.cross_count.values())
        combined: torch.Tensor | None = None
        for r, summed in self.cross.items():
            mean = summed / self.cross_count[r]  # B × r² × J
            if self.self_attention and r in self.selfs:
                affinity = self.selfs[r] / self.self_count[r]  # B × r² × r²
                for _ in range(REFINEMENT_POWER):
                    mean = torch.bmm(affinity, mean)
            b, _, j = mean.shape
            grid = mean.transpose(1, 2).reshape(b, j, r, r)
            if r != common:
                grid = F.interpolate(grid, size=(common, common), mode="bilinear", align_corners=False)
            weighted = grid * (self.cross_count[r] / total)
            combined = weighted if combined is None else combined + weighted
        assert combined is not None
        return combined

    def _daam_maps(self) -> torch.Tensor:
        size = self.latent_size
        assert size is not None
        total: torch.Tensor | None = None
        pairs = 0
        for summed in self.per_head.values():  # B × heads × r² × J, summed over steps
            b, heads, positions, j = summed.shape
            r = math.isqrt(positions)
            grid = summed.transpose(2, 3).reshape(b * heads, j, r, r)
            up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp_(min=0)
            head_sum = up.reshape(b, heads, j, size, size).sum(dim=1)
            total = head_sum if total is None else total + head_sum
            pairs += heads
        assert total is not None
        return total / pairs

    def nbytes(self) -> int:
        """Memory held by the running sums."""
        held = (*self.cross.values(), *self.selfs.values(), *self.per_head.values())
        return sum(t.numel() * t.element_size() for t in held)


def captured_steps(total: int, window: tuple[float, float]) -> set[int]:
    """Steps s of `total` whose centre (s + ½)/total lies in `window`; the nearest one if none does."""
    start, end = window
    chosen = {s for s in range(total) if start <= (s + 0.5) / total <= end}
    if not chosen and total > 0:
        centre = (start + end) / 2
        chosen = {min(range(total), key=lambda s: abs((s + 0.5) / total - centre))}
    return chosen


def _probabilities(
    attn: Any, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(Q Kᵀ · scale [+ mask]) in float32; query/key are B × heads × L × d."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


class CaptureProcessor:
    """Attention processor of one captured UNet layer: ``AttnProcessor2_0``'s computation plus capture.

    ``kind`` is ``"cross"`` (attn2: keeps the object-token columns) or ``"self"`` (attn1, for the refinement).
    The output is computed exactly as ``diffusers.models.attention_processor.AttnProcessor2_0`` computes it;
    the probabilities for the store are computed beside it, only while the store's step is active.
    """

    def __init__(self, store: AttentionStore, resolution: int, kind: str = "cross", name: str = "") -> None:
        self.store, self.resolution, self.kind, self.name = store, resolution, kind, name

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.store.active:
            self._capture(attn, query, key, attention_mask)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @torch.no_grad()
    def _capture(self, attn: Any, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> None:
        store = self.store
        q, k = store.conditional(query), store.conditional(key)
        m = None if mask is None else store.conditional(mask) if mask.shape[0] == query.shape[0] else mask
        if q.shape[2] != self.resolution * self.resolution:
            raise RuntimeError(
                f"captured layer expected a {self.resolution}x{self.resolution} feature map, got "
                f"{q.shape[2]} positions (non-square images are not supported by capture)"
            )
        if self.kind == "cross":
            store.add_cross(self.name, self.resolution, store.object_probabilities(q, k, attn.scale, mask=m))
        else:
            store.add_self(self.resolution, _probabilities(attn, q, k, m))


def layer_level(name: str, down_blocks: int, up_blocks: int) -> int | None:
    """How many times the UNet halved the feature map at the layer called `name` (None if unknown)."""
    m = _BLOCK.match(name)
    if not m:
        return None
    if m.group(3):  # mid_block
        return down_blocks - 1
    index = int(m.group(2))
    return index if m.group(1) == "down_blocks" else up_blocks - 1 - index


def layer_resolutions(unet: Any, latent_size: int) -> dict[str, int]:
    """Feature-map size of every attention processor of `unet` (name → r) for a latent_size² input."""
    downs = len(getattr(unet, "down_blocks", []))
    ups = len(getattr(unet, "up_blocks", []))
    sizes = {}
    for name in unet.attn_processors:
        level = layer_level(name, downs, ups)
        if level is not None:
            sizes[name] = max(1, latent_size // (2**level))
    return sizes


class InstalledCapture:
    """Capture processors installed on some layers of a denoiser (UNet or transformer), and a step counter.

    ``processors`` maps layer names (keys of ``model.attn_processors``) to the processors to install there;
    they are installed through ``model.set_attn_processor`` with a dict that keeps every other layer's
    existing processor, and a forward pre-hook counts denoiser calls. ``scheduler_steps()`` returns the
    number of steps of the running call (``len(scheduler.timesteps)``). :meth:`remove` (or leaving the
    ``with`` block) restores the original processors.
    """

    def __init__(
        self,
        model: Any,
        store: AttentionStore,
        processors: dict[str, Any],
        scheduler_steps: Callable[[], int],
    ) -> None:
        self.model, self.store = model, store
        self.original = dict(model.attn_processors)
        model.set_attn_processor({name: processors.get(name, proc) for name, proc in self.original.items()})
        self._hook = model.register_forward_pre_hook(lambda module, args: store.next_step(scheduler_steps()))

    def remove(self) -> None:
        """Restore the original processors and remove the step hook."""
        self._hook.remove()
        self.model.set_attn_processor(dict(self.original))

    def __enter__(self) -> InstalledCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Capture(InstalledCapture):
    """Capture on a UNet: ``Capture(unet, store, latent_size, scheduler_steps)``.

    With the ``mean`` aggregation it selects the ``attn2`` layers whose feature map is in
    ``store.resolutions`` (and their ``attn1`` layers when the store refines with self-attention); with
    ``daam`` it selects DAAM's layers (the module docstring). Each gets a :class:`CaptureProcessor`.
    """

    def __init__(
        self, unet: Any, store: AttentionStore, latent_size: int, scheduler_steps: Callable[[], int]
    ) -> None:
        sizes = layer_resolutions(unet, latent_size)
        self.layers: dict[str, tuple[int, str]] = {}
        for name, r in sizes.items():
            if store.aggregation == "daam":
                if _DAAM_LAYER.match(name) and r != latent_size // 8:
                    self.layers[name] = (r, "cross")
            elif r not in store.resolutions:
                continue
            elif name.endswith("attn2.processor"):
                self.layers[name] = (r, "cross")
            elif name.endswith("attn1.processor") and store.self_attention:
                self.layers[name] = (r, "self")
        if not any(kind == "cross" for _, kind in self.layers.values()):
            available = sorted({r for n, r in sizes.items() if n.endswith("attn2.processor")})
            wanted = "DAAM's layers" if store.aggregation == "daam" else f"resolutions {store.resolutions}"
            raise ValueError(
                f"the model has no cross-attention layer at {wanted} for a {latent_size}x{latent_size} "
                f"latent; its cross-attention feature maps are {available}"
            )
        processors = {name: CaptureProcessor(store, r, kind, name) for name, (r, kind) in self.layers.items()}
        super().__init__(unet, store, processors, scheduler_steps)
