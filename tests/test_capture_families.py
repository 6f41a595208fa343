"""Capture on every supported family (SD 1.x, SDXL, SD3, FLUX): identical images, one map per object word at
the right text positions, block selection, and the bad inputs (exit 65)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from freeatm.api.synthetic_dataset import Attention, Generation
from freeatm.runtime.errors import InvalidInput
from freeatm.runtime.generate.capture import CaptureProcessor
from freeatm.runtime.generate.capture_mmdit import FluxCaptureProcessor, SD3CaptureProcessor, block_names
from freeatm.runtime.generate.families import FamilyPipeline
from freeatm.runtime.generate.models import load_pipeline
from freeatm.runtime.generate.prompts import ObjectWord, PromptItem, locate
from freeatm.runtime.generate.sampler import Sampler
from freeatm.runtime.toy.families import BUILDERS, tiny_flux

ITEMS = [
    PromptItem(
        "a red triangle and a blue circle",
        (ObjectWord("triangle", "triangle", ("red",)), ObjectWord("circle", "circle")),
    ),
    PromptItem("a green square", (ObjectWord("square", "square"),)),
]
FAMILY_OF = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}  # fmt: skip
COLUMNS = {"sd": 3, "sdxl": 3, "sd3": 3 + 5, "flux": 5}
PROCESSOR = {"sd": CaptureProcessor, "sdxl": CaptureProcessor, "sd3": SD3CaptureProcessor,
             "flux": FluxCaptureProcessor}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return FamilyPipeline.of(BUILDERS[request.param]())


def _generation(family: FamilyPipeline) -> Generation:
    scheduler = "flow-euler" if family.transformer else "ddim"
    return Generation(images=2, resolution=32, steps=2, guidance_scale=3.0, batch_size=2, scheduler=scheduler)


def _images(sampler: Sampler) -> np.ndarray:
    """One pipeline call on ITEMS with fixed noise, float32 images (the store armed when there is one)."""
    pipe, family = sampler.pipe, sampler.family
    latents, _ = sampler.initial_noise([5, 6])
    if sampler.store is not None:
        located = [locate(item, sampler.text) for item in ITEMS]
        sampler.store.begin(2, sampler.generation.guidance_scale > 1 and family.family != "flux",
                            sampler._columns(located)[1])  # fmt: skip
    try:
        return pipe([i.prompt for i in ITEMS], height=32, width=32, num_inference_steps=2, guidance_scale=3.0,
                    latents=latents, output_type="np", **family.call_kwargs()).images  # fmt: skip
    finally:
        if sampler.store is not None:
            sampler.store.end()


def test_family_detected_from_the_pipeline(family: FamilyPipeline) -> None:
    assert FAMILY_OF[family.family] == type(family.pipe).__name__


def test_images_identical_with_and_without_capture(family: FamilyPipeline) -> None:
    generation, attention = _generation(family), Attention(resolutions=[8, 16], modifiers=True)
    with Sampler(family.pipe, generation, attention, capture=False) as plain:
        reference = _images(plain)
    before = dict(family.denoiser.attn_processors)
    with Sampler(family.pipe, generation, attention) as sampler:
        installed = {n for n, p in family.denoiser.attn_processors.items() if p is not before[n]}
        assert installed == set(sampler.capture.layers)
        assert all(
            isinstance(family.denoiser.attn_processors[n], PROCESSOR[family.family]) for n in installed
        )
        captured = _images(sampler)
        assert sampler.store.steps_done == [0, 1]
        maps = sampler.store.maps()
    assert all(family.denoiser.attn_processors[n] is p for n, p in before.items())  # restored
    np.testing.assert_allclose(captured, reference, atol=1e-5, rtol=0)
    # columns of triangle, red, circle (CLIP: 1 position each; T5: 2, 1, 2); maps are probabilities
    assert maps.shape[:2] == (2, COLUMNS[family.family]) and maps.shape[2] == maps.shape[3]
    assert maps.min() >= 0 and maps.max() <= 1 and maps.sum() > 0


def test_one_map_per_object_word(family: FamilyPipeline) -> None:
    generation = _generation(family)
    attention = Attention(resolutions=[8], mask_resolution=16, timesteps=(0.5, 1.0))
    with Sampler(family.pipe, generation, attention) as sampler:
        samples = sampler.generate(ITEMS, [0, 1], [5, 6])
        assert sampler.store.steps_done == [1]  # the window: the second of two steps only
    for item, sample in zip(ITEMS, samples, strict=True):
        assert [o.word for o in sample.objects] == [o.word for o in item.objects]
        assert sample.soft.shape[0] == len(item.objects) and sample.labels.shape == (16, 16)


def _pieces(tokenizer: Any, prompt: str, positions: tuple[int, ...], offset: int, length: int) -> list[str]:
    ids = tokenizer(prompt, truncation=True, max_length=length)["input_ids"]
    return tokenizer.convert_ids_to_tokens([ids[p - offset] for p in positions])


def test_columns_of_a_multi_piece_word() -> None:
    """SD3: "triangle" is one CLIP token and two T5 pieces, after the CLIP part; FLUX: the two T5 pieces."""
    sd3, flux = FamilyPipeline.of(BUILDERS["sd3"]()), FamilyPipeline.of(tiny_flux())
    prompt = ITEMS[0].prompt
    clip, t5 = sd3.text()
    # the toy CLIP tokenizer's 16 positions, then T5
    assert (clip.offset, t5.offset, t5.length) == (0, 16, 32)
    triangle, circle = locate(ITEMS[0], sd3.text())
    assert triangle.word_tokens == (3, 16 + 2, 16 + 3)
    assert _pieces(clip.tokenizer, prompt, triangle.word_tokens[:1], 0, 16) == ["triangle"]
    assert _pieces(t5.tokenizer, prompt, triangle.word_tokens[1:], 16, 32) == ["▁tri", "angle"]
    assert triangle.modifier_tokens == (2, 16 + 1)
    assert circle.word_tokens == (7, 16 + 7, 16 + 8)
    (segment,) = flux.text()
    triangle, circle = locate(ITEMS[0], flux.text())
    assert triangle.word_tokens == (2, 3) and circle.word_tokens == (7, 8)
    assert _pieces(segment.tokenizer, prompt, circle.word_tokens, 0, 32) == ["▁cir", "cle"]


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_map_is_the_image_query_text_key_block(name: str) -> None:
    """The stored map of a column equals softmax over the joint keys, image rows, averaged over heads (SD3's
    sequence is [image, CLIP, T5], FLUX's [T5, image])."""
    family = FamilyPipeline.of(
        BUILDERS[name](layers=1) if name == "sd3" else tiny_flux(layers=1, single_layers=1)
    )
    generation = _generation(family)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    spied = PROCESSOR[name]

    class Spy(spied):  # type: ignore[misc,valid-type]
        def attend_capturing(  # type: ignore[no-untyped-def]
            self, attend, query, key, value, image, text_offset, heads_dim
        ):
            q, k = (query, key) if heads_dim == 1 else (query.transpose(1, 2), key.transpose(1, 2))
            seen.append((q.detach().clone(), k.detach().clone()))
            return super().attend_capturing(attend, query, key, value, image, text_offset, heads_dim)

    with Sampler(family.pipe, generation, Attention(blocks=(0, 0))) as sampler:
        layer = sampler.capture.layers[0]
        args = (family.denoiser.attn_processors[layer],) if name == "flux" else ()
        family.denoiser.transformer_blocks[0].attn.set_processor(Spy(sampler.store, 8, layer, *args))
        _images(sampler)
        maps = sampler.store.maps()
        columns = sampler.store.columns
    expected = 0
    for query, key in seen:  # B (2 × 2 under SD3's guidance) × heads × L × d
        query, key = query[-2:], key[-2:]  # the conditional rows
        probs = (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).softmax(-1)
        image = probs[:, :, :64] if name == "sd3" else probs[:, :, -64:]
        text = columns + (64 if name == "sd3" else 0)
        kept = torch.stack([image[b][..., text[b]] for b in range(2)]).mean(1)  # B × 64 × J
        expected = expected + kept
    expected = (expected / len(seen)).transpose(1, 2).reshape(2, -1, 8, 8)
    assert len(seen) == 2  # one block, two steps
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_transformer_capture_attends_no_extra_rows(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A captured block takes the kept probabilities from its own attention call: torch's SDPA attends as many
    query rows with capture as without (an extra call for the probabilities would add the image rows)."""
    family = FamilyPipeline.of(BUILDERS[name]())
    generation, attention = _generation(family), Attention(modifiers=True)
    rows = [0]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(query, key, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        rows[0] += query.shape[0] * query.shape[-2]
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with Sampler(family.pipe, generation, attention, capture=False) as plain:
        _images(plain)
    plain_rows, rows[0] = rows[0], 0
    with Sampler(family.pipe, generation, attention) as sampler:
        _images(sampler)
        assert sampler.store.steps_done == [0, 1]
    assert rows[0] == plain_rows


def test_flux_backend_outside_sdpa_keeps_its_call() -> None:
    """Under an attention backend that may not take the padded head size (here torch's math backend, named
    explicitly), FLUX's block output goes through that backend unchanged and the probabilities come from an
    extra call: the images and the maps equal those of the default backend."""
    from diffusers.models.attention_dispatch import attention_backend

    family = FamilyPipeline.of(tiny_flux())
    generation, attention = _generation(family), Attention(modifiers=True)
    with Sampler(family.pipe, generation, attention) as sampler:
        images, maps = _images(sampler), sampler.store.maps()
    with attention_backend("_native_math"):
        with Sampler(family.pipe, generation, attention, capture=False) as plain:
            reference = _images(plain)
        with Sampler(family.pipe, generation, attention) as sampler:
            processor = family.denoiser.attn_processors[sampler.capture.layers[0]]
            assert not processor._selectors_fit()
            math_images, math_maps = _images(sampler), sampler.store.maps()
    np.testing.assert_allclose(math_images, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(math_images, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(math_maps, maps, atol=1e-6, rtol=1e-5)


def test_flux_block_range_spans_joint_and_single_blocks() -> None:
    family = FamilyPipeline.of(tiny_flux())
    assert block_names(family.denoiser) == [
        "transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor",
        "single_transformer_blocks.0.attn.processor", "single_transformer_blocks.1.attn.processor",
    ]  # fmt: skip
    generation = _generation(family)
    with Sampler(family.pipe, generation, Attention()) as sampler:
        assert sampler.capture.layers == block_names(family.denoiser)[:2]  # default: the joint blocks
    with Sampler(family.pipe, generation, Attention(blocks=(1, 3))) as sampler:
        assert sampler.capture.layers == block_names(family.denoiser)[1:]
        samples = sampler.generate(ITEMS, [0, 1], [5, 6])
        assert sampler.store.cross_count == {8: 3 * 2}  # three blocks, two steps
    assert samples[0].soft.shape == (2, 8, 8)


def test_block_range_beyond_the_model_is_invalid_input() -> None:
    family = FamilyPipeline.of(BUILDERS["sd3"]())
    with pytest.raises(InvalidInput, match=r"attention.blocks: block range \[1, 3\] is outside the 3 blocks"):
        Sampler(family.pipe, _generation(family), Attention(blocks=(1, 3)))
    assert not any(isinstance(p, SD3CaptureProcessor) for p in family.denoiser.attn_processors.values())


def test_unplaceable_word_and_wrong_scheduler_are_invalid_input() -> None:
    family = FamilyPipeline.of(tiny_flux())
    unknown = PromptItem("a red zebra", (ObjectWord("zebra", "zebra"),))
    with pytest.raises(
        InvalidInput, match="'zebra' of prompt 'a red zebra' is unknown to the model's tokenizer"
    ):
        locate(unknown, family.text())
    with pytest.raises(
        InvalidInput, match="'ddim' does not sample a flow-matching flux model; use flow-euler"
    ):
        Sampler(family.pipe, Generation(resolution=32, scheduler="ddim"), Attention())
    with pytest.raises(InvalidInput, match="aggregation daam is defined for UNet models"):
        Sampler(family.pipe, Generation(resolution=32, scheduler="flow-euler"), Attention(aggregation="daam"))


def test_unsupported_pipeline_class_fails_before_loading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableCascadeDecoderPipeline"}))
    with pytest.raises(InvalidInput) as e:
        load_pipeline(f"file://{tmp_path}", device="cpu")
    assert e.value.exit_code == 65
    assert "'StableCascadeDecoderPipeline' is not supported by attention capture" in str(e.value)
    assert all(name in str(e.value) for name in FAMILY_OF.values())


def test_family_loads_from_a_saved_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny_flux().save_pretrained(tmp_path / "flux")
    model = load_pipeline(f"file://{tmp_path / 'flux'}", device="cpu")
    assert model.family == "flux" and model.identity()["class"] == "FluxPipeline"


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_transformer_dataset_end_to_end(tmp_path, family: str) -> None:  # type: ignore[no-untyped-def]
    """generate.run on a saved SD3/FLUX pipeline: the family is detected, every object word is placed in the
    T5 sequence up front, and the records carry the multi-piece positions; a block range beyond the model is
    InvalidInput before any image."""
    import freeatm.runtime.generate as generate
    from freeatm.api import parse_resource
    from freeatm.runtime.dataset_format import read_shard
    from freeatm.runtime.storage import open_store

    BUILDERS[family]().save_pretrained(tmp_path / "model")

    def resource(output: str, **attention: Any):  # type: ignore[no-untyped-def]
        spec = {
            "model": {"uri": f"file://{tmp_path / 'model'}"},
            "prompts": {"classes": ["triangle", "circle"], "templates": ["a red {}"]},
            "generation": {"images": 2, "resolution": 32, "steps": 2, "guidanceScale": 3.0, "batchSize": 2,
                           "shardSize": 2, "scheduler": "flow-euler"},
            "attention": {"resolutions": [8], "keepSoftMaps": True, **attention},
            "output": {"uri": output},
        }  # fmt: skip
        return parse_resource({"apiVersion": "freeatm.io/v1alpha1", "kind": "SyntheticDataset",
                               "metadata": {"name": family}, "spec": spec})  # fmt: skip

    with pytest.raises(InvalidInput, match=r"attention.blocks: block range \[0, 9\] is outside"):
        generate.run(resource(f"file://{tmp_path}/bad", blocks=[0, 9]))
    outputs = generate.run(resource(f"file://{tmp_path}/ds"))
    store = open_store(outputs["uri"])
    manifest = json.loads(store.read_bytes("manifest.json"))
    assert manifest["model"]["class"] == FAMILY_OF[family]
    (sample_a, sample_b) = read_shard(store, manifest["shards"][0])
    t5 = 16 if family == "sd3" else 0  # SD3: the T5 positions follow the 16 CLIP positions
    clip = [3] if family == "sd3" else []  # "<bos> a red triangle <eos>": the noun at 3
    assert sample_a.record["objects"][0]["tokenIndices"] == clip + [t5 + 2, t5 + 3]  # ▁tri angle
    assert sample_b.record["objects"][0]["tokenIndices"] == clip + [t5 + 2, t5 + 3]  # ▁cir cle
    assert sample_a.soft.shape == (1, 8, 8) and sample_a.mask.shape == (32, 32)
