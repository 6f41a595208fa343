"""Attention capture: identical images, only the selected layers, and the documented aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from freeatm.runtime.generate.capture import (
    REFINEMENT_POWER,
    AttentionStore,
    Capture,
    CaptureProcessor,
    captured_steps,
    layer_resolutions,
)

PROMPTS = ["a red circle and a blue square", "a green triangle", "a white square and a cyan circle"]


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    from freeatm.runtime.toy import build_random_pipeline

    p = build_random_pipeline(seed=3)
    p.set_progress_bar_config(disable=True)
    return p


def _generate(pipe, guidance: float, steps: int = 3) -> np.ndarray:  # type: ignore[no-untyped-def]
    generators = [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]
    return pipe(
        PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np"
    ).images


def _columns(batch: int) -> torch.Tensor:
    return torch.tensor([[1, 2, 3, 6]] * batch)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_images_identical_with_and_without_capture(pipe, guidance: float) -> None:  # type: ignore[no-untyped-def]
    plain = _generate(pipe, guidance)
    store = AttentionStore([8, 16], (0.0, 1.0), self_attention=True)
    with Capture(pipe.unet, store, 32, lambda: len(pipe.scheduler.timesteps)):
        store.begin(len(PROMPTS), guidance > 1, _columns(len(PROMPTS)))
        captured = _generate(pipe, guidance)
        store.end()
    assert store.cross_count and store.steps_done == [0, 1, 2]
    np.testing.assert_allclose(captured, plain, atol=1e-5, rtol=0)


def test_only_selected_layers_are_replaced_and_restored(pipe) -> None:  # type: ignore[no-untyped-def]
    before = dict(pipe.unet.attn_processors)
    sizes = layer_resolutions(pipe.unet, 32)
    assert {r for n, r in sizes.items() if n.endswith("attn2.processor")} == {16, 8}
    store = AttentionStore([16], (0.0, 1.0))
    with Capture(pipe.unet, store, 32, lambda: 1):
        during = pipe.unet.attn_processors
        for name, proc in during.items():
            if name.endswith("attn2.processor") and sizes[name] == 16:
                assert isinstance(proc, CaptureProcessor) and proc.resolution == 16
            else:  # everything else keeps its (fast SDPA) processor object
                assert proc is before[name] and isinstance(proc, AttnProcessor2_0)
    after = pipe.unet.attn_processors
    assert all(after[n] is before[n] for n in before)


def test_no_layer_at_resolution_is_an_error(pipe) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"cross-attention feature maps are \[8, 16\]"):
        Capture(pipe.unet, AttentionStore([32], (0.0, 1.0)), 32, lambda: 1)


def test_captured_steps_window() -> None:
    assert captured_steps(20, (0.0, 1.0)) == set(range(20))
    assert captured_steps(20, (0.66, 1.0)) == set(range(13, 20))
    assert captured_steps(10, (0.0, 0.5)) == set(range(5))
    assert captured_steps(1, (0.66, 1.0)) == {0}  # never empty: the nearest step
    assert captured_steps(4, (0.3, 0.35)) == {1}


class _Recorder:
    """Test-only reference processor: the default computation plus every step's full probabilities."""

    def __init__(self, name: str, log: list) -> None:  # type: ignore[type-arg]
        self.name, self.log = name, log

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):  # type: ignore[no-untyped-def]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        self.log.append((self.name, attn.get_attention_scores(q, k, None).detach().clone(), attn.heads))
        return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_store_matches_brute_force_average(pipe) -> None:  # type: ignore[no-untyped-def]
    """maps() = mean over captured (layer, step) of head-averaged conditional probabilities, upsampled to 16."""
    steps, window, guidance = 4, (0.5, 1.0), 3.0
    batch = len(PROMPTS)
    columns = torch.tensor([[2, 3, 6, 7], [1, 2, 3, 3], [2, 3, 6, 7]])
    sizes = layer_resolutions(pipe.unet, 32)

    log: list = []  # type: ignore[type-arg]
    original = dict(pipe.unet.attn_processors)
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(len(log)))
    pipe.unet.set_attn_processor(
        {n: _Recorder(n, log) if n.endswith("attn2.processor") else p for n, p in original.items()}
    )
    try:
        reference = _generate(pipe, guidance, steps)
    finally:
        hook.remove()
        pipe.unet.set_attn_processor(dict(original))

    store = AttentionStore([8, 16], window)
    with Capture(pipe.unet, store, 32, lambda: len(pipe.scheduler.timesteps)):
        store.begin(batch, True, columns)
        captured = _generate(pipe, guidance, steps)
        maps = store.maps()
        store.end()
    np.testing.assert_allclose(captured, reference, atol=1e-5, rtol=0)
    assert store.steps_done == [2, 3]

    calls.append(len(log))
    expected, n = torch.zeros(batch, 4, 16, 16), 0
    for step in captured_steps(steps, window):
        for name, probs, heads in log[calls[step] : calls[step + 1]]:
            r = sizes[name]
            p = probs.reshape(-1, heads, r * r, probs.shape[-1])[batch:]  # conditional half
            mean = p.mean(1).gather(2, columns[:, None, :].expand(-1, r * r, -1))
            grid = mean.transpose(1, 2).reshape(batch, 4, r, r)
            expected += F.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=False)
            n += 1
    assert n == sum(store.cross_count.values()) == 2 * 7  # 7 cross-attention layers at 8 or 16, 2 steps
    torch.testing.assert_close(maps, expected / n, atol=1e-6, rtol=1e-4)
    # token maps are probabilities of kept columns: within [0, 1]; duplicates of a column are equal
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps[1, 2], maps[1, 3])


def test_store_memory_is_running_sums_only(pipe) -> None:  # type: ignore[no-untyped-def]
    store = AttentionStore([8, 16], (0.0, 1.0))
    with Capture(pipe.unet, store, 32, lambda: len(pipe.scheduler.timesteps)):
        store.begin(len(PROMPTS), False, _columns(len(PROMPTS)))
        _generate(pipe, 1.0, steps=5)
        store.end()
    j = 4
    assert store.nbytes() == len(PROMPTS) * j * (16 * 16 + 8 * 8) * 4
    assert store.cross_count == {16: 5 * 3, 8: 5 * 4}  # (layers at r) x steps


def test_self_attention_refinement(pipe) -> None:  # type: ignore[no-untyped-def]
    store = AttentionStore([16], (0.0, 1.0), self_attention=True)
    with Capture(pipe.unet, store, 32, lambda: len(pipe.scheduler.timesteps)) as capture:
        assert sum(kind == "self" for _, kind in capture.layers.values()) == 3
        store.begin(len(PROMPTS), False, _columns(len(PROMPTS)))
        _generate(pipe, 1.0, steps=2)
        refined = store.maps()
        store.self_attention = False
        plain = store.maps()
        store.end()
    affinity = store.selfs[16] / store.self_count[16]
    torch.testing.assert_close(affinity.sum(-1), torch.ones(len(PROMPTS), 256), atol=1e-5, rtol=0)
    expected = store.cross[16] / store.cross_count[16]
    for _ in range(REFINEMENT_POWER):
        expected = torch.bmm(affinity, expected)
    torch.testing.assert_close(refined, expected.transpose(1, 2).reshape(len(PROMPTS), 4, 16, 16))
    assert not torch.allclose(refined, plain)


def test_unarmed_store_captures_nothing(pipe) -> None:  # type: ignore[no-untyped-def]
    store = AttentionStore([16], (0.0, 1.0))
    with Capture(pipe.unet, store, 32, lambda: len(pipe.scheduler.timesteps)):
        _generate(pipe, 1.0, steps=1)
    assert not store.cross and store.steps_done == []
