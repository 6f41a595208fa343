"""Cross-attention capture: diffusers attention processors that feed an explicit :class:`AttentionStore`.

How the soft map of a token is aggregated (this is the definition the datasets' masks rest on)
----------------------------------------------------------------------------------------------
Let the pipeline run N denoising steps (one UNet call per step) on a batch of B prompts. For every captured
layer ℓ — a cross-attention ("attn2") layer of the UNet whose feature map is r_ℓ × r_ℓ with r_ℓ in
``attention.resolutions`` — and every captured step s:

1. **Probabilities.** P = softmax(Q Kᵀ / √d) with the layer's own (normalised) queries Q (r_ℓ² positions) and
   keys K (text tokens), d the head size, computed in float32 for the *conditional* rows of the batch only
   (with classifier-free guidance the UNet batch is [unconditional, conditional] and only the second half is
   used; without guidance the whole batch is conditional). The attention mask, if any, is applied as in the
   layer itself.
2. **Heads.** P is averaged over the layer's heads: A_{ℓ,s} = mean_h P_h, an r_ℓ² × T map per token.
3. **Tokens.** Only the columns of the tokens that belong to object words (and their modifiers) are kept,
   J ≤ T columns per sample; everything else is dropped before it is stored.
4. **Running sums.** A_{ℓ,s} is added to the running sum S_r of its resolution r = r_ℓ, and the count n_r
   is incremented. Nothing per-step is kept: memory is B × J × r² floats per resolution.
5. **Timestep window.** Step s (0-based) is captured when its centre (s + ½) / N lies in
   ``attention.timesteps`` = [a, b] (0 = first, noisiest step; 1 = last step). When no step centre falls in
   the window, the step whose centre is nearest to it is captured, so a window never captures nothing.
6. **Combination.** At the end, every resolution's sum is upsampled bilinearly (align_corners=False) to the
   common resolution R = max(resolutions) and the maps are averaged over every captured (layer, step) pair:
   M = Σ_r up_R(S_r) / Σ_r n_r. Because upsampling is linear this equals upsampling each A_{ℓ,s} first and
   averaging them all with equal weight — the prompt-to-prompt AttentionStore average, and DAAM's sum up to
   a constant factor.
7. **Self-attention refinement** (``attention.selfAttentionRefinement``, Dataset Diffusion): the
   self-attention ("attn1") layers of the same transformer blocks are captured the same way (steps 1, 2, 4, 5;
   all r² key positions kept), giving the average self-attention Ā_r (r² × r²) per resolution, and each
   resolution's mean cross-attention map is propagated through it before step 6:
   M_r ← (Ā_r)^τ (S_r / n_r), τ = :data:`REFINEMENT_POWER`; the combination then weights M_r by n_r.

The result is ``AttentionStore.maps()``: B × J × R × R token maps, turned into per-object masks by
:mod:`freeatm.runtime.generate.masks`.

Every layer that is not captured keeps the processor it had (diffusers' fast SDPA processor by default); a
captured layer computes its output exactly as diffusers' ``AttnProcessor2_0`` does (the same operations on the
same tensors), so images are identical with and without capture.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

REFINEMENT_POWER = 4
"""τ of the self-attention refinement: the cross-attention map is propagated τ times through Ā."""

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


class AttentionStore:
    """Running sums of the captured attention maps of one pipeline call (see the module docstring).

    Lifecycle: :meth:`begin` before a pipeline call (batch size, classifier-free guidance, token columns),
    :meth:`next_step` at every UNet call (a forward pre-hook), the processors' :meth:`add_cross` /
    :meth:`add_self` while a step is :attr:`active`, :meth:`maps` after the call.
    """

    def __init__(
        self, resolutions: list[int], window: tuple[float, float], self_attention: bool = False
    ) -> None:
        self.resolutions = sorted(set(resolutions))
        self.window = window
        self.self_attention = self_attention
        self.armed = False
        self.active = False
        self.batch_size = 0
        self.cfg = False
        self.columns: torch.Tensor | None = None
        self.step = -1
        self.steps_done: list[int] = []
        self.cross: dict[int, torch.Tensor] = {}
        self.cross_count: dict[int, int] = {}
        self.selfs: dict[int, torch.Tensor] = {}
        self.self_count: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------
    def begin(self, batch_size: int, cfg: bool, columns: torch.Tensor) -> None:
        """Arm the store for one pipeline call; `columns` (B × J, long) are the token positions to keep.

        `columns` must be on the UNet's device: moving them in every captured layer would block on a GPU."""
        self.armed, self.active = True, False
        self.batch_size, self.cfg = batch_size, cfg
        self.columns = columns
        self.step = -1
        self.steps_done = []
        self.cross, self.cross_count, self.selfs, self.self_count = {}, {}, {}, {}

    def end(self) -> None:
        self.armed = self.active = False

    def next_step(self, total_steps: int) -> None:
        """Called once per UNet call: advance the step counter and decide whether this step is captured."""
        if not self.armed:
            return
        self.step += 1
        self.active = self.step in captured_steps(total_steps, self.window)
        if self.active:
            self.steps_done.append(self.step)

    def conditional(self, x: torch.Tensor) -> torch.Tensor:
        """The conditional rows of a UNet batch: the last `batch_size` (the second half under guidance)."""
        if x.shape[0] not in (self.batch_size, 2 * self.batch_size):
            raise RuntimeError(
                f"attention batch {x.shape[0]} does not match the armed batch size {self.batch_size}"
            )
        return x[-self.batch_size :]

    # -- accumulation ----------------------------------------------------------------------------------------
    def add_cross(self, resolution: int, probs: torch.Tensor) -> None:
        """Add head-averaged cross-attention `probs` (B × heads × r² × T, conditional rows) at `resolution`."""
        assert self.columns is not None
        mean = probs.mean(dim=1)  # B × r² × T
        kept = mean.gather(2, self.columns[:, None, :].expand(-1, mean.shape[1], -1))  # B × r² × J
        if resolution in self.cross:
            self.cross[resolution] += kept
            self.cross_count[resolution] += 1
        else:
            self.cross[resolution] = kept.clone()
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
        """B × J × R × R token maps at R = max(resolutions), averaged as the module docstring defines."""
        if not self.cross:
            raise RuntimeError(
                "no cross-attention was captured: no layer at the selected resolutions ran during a captured step"
            )
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

    def nbytes(self) -> int:
        """Memory held by the running sums."""
        return sum(t.numel() * t.element_size() for t in (*self.cross.values(), *self.selfs.values()))


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
    """Attention processor of one captured layer: ``AttnProcessor2_0``'s computation plus capture.

    ``kind`` is ``"cross"`` (attn2: keeps the object-token columns) or ``"self"`` (attn1, for the refinement).
    The output is computed exactly as ``diffusers.models.attention_processor.AttnProcessor2_0`` computes it;
    the probabilities for the store are computed beside it, only while the store's step is active.
    """

    def __init__(self, store: AttentionStore, resolution: int, kind: str = "cross") -> None:
        self.store, self.resolution, self.kind = store, resolution, kind

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
                f"captured layer expected a {self.resolution}x{self.resolution} feature map, got {q.shape[2]} "
                "positions (non-square images are not supported by capture)"
            )
        probs = _probabilities(attn, q, k, m)
        if self.kind == "cross":
            store.add_cross(self.resolution, probs)
        else:
            store.add_self(self.resolution, probs)


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


class Capture:
    """Installs capture processors on a UNet (only on the selected layers) and removes them again.

    ``Capture(unet, store, latent_size, scheduler_steps)`` selects the ``attn2`` layers whose feature map is in
    ``store.resolutions`` (and their ``attn1`` layers when the store refines with self-attention), installs
    :class:`CaptureProcessor` on them through ``unet.set_attn_processor`` with a dict that keeps every other
    layer's existing processor, and registers a forward pre-hook that counts UNet calls.
    ``scheduler_steps()`` returns the number of steps of the running call (``len(scheduler.timesteps)``).
    """

    def __init__(
        self, unet: Any, store: AttentionStore, latent_size: int, scheduler_steps: Callable[[], int]
    ) -> None:
        self.unet, self.store = unet, store
        self.original = dict(unet.attn_processors)
        sizes = layer_resolutions(unet, latent_size)
        self.layers: dict[str, tuple[int, str]] = {}
        for name, r in sizes.items():
            if r not in store.resolutions:
                continue
            if name.endswith("attn2.processor"):
                self.layers[name] = (r, "cross")
            elif name.endswith("attn1.processor") and store.self_attention:
                self.layers[name] = (r, "self")
        if not any(kind == "cross" for _, kind in self.layers.values()):
            available = sorted({r for n, r in sizes.items() if n.endswith("attn2.processor")})
            raise ValueError(
                f"the model has no cross-attention layer at resolutions {store.resolutions} for a {latent_size}x"
                f"{latent_size} latent; its cross-attention feature maps are {available}"
            )
        processors = {
            name: CaptureProcessor(store, *self.layers[name]) if name in self.layers else proc
            for name, proc in self.original.items()
        }
        unet.set_attn_processor(processors)
        self._hook = unet.register_forward_pre_hook(lambda module, args: store.next_step(scheduler_steps()))

    def remove(self) -> None:
        """Restore the original processors and remove the step hook."""
        self._hook.remove()
        self.unet.set_attn_processor(dict(self.original))

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
