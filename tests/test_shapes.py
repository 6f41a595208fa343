"""ShapesBench scenes (plain, clutter and crowd): deterministic, masks that match the pixels, drawn-object recovery, and
the clutter variant's mechanism check."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from freeatm.runtime.shapes import (
    BACKGROUND,
    CAPTION_WORDS,
    CLUTTER_CAPTION_WORDS,
    CLUTTER_SHAPES,
    COLOURS,
    HUES,
    SHAPES,
    ObjectSpec,
    caption_for,
    find_drawn_objects,
    max_objects,
    parse_caption,
    render,
    render_clutter_scene,
    render_crowd_scene,
    render_scene,
    render_stream,
    shapes_of,
)
from freeatm.runtime.shapesbench.check import MIN_PAIR_DISJOINT, MIN_VIEW_MISS, main, mechanism_check


def test_scenes_are_deterministic_per_seed_and_index() -> None:
    first, again = render_scene(3, 17), render_scene(3, 17)
    assert np.array_equal(first.image, again.image)
    assert first.caption == again.caption
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first.objects, again.objects, strict=True))
    others = [render_scene(3, 18), render_scene(4, 17)]
    assert all(not np.array_equal(first.image, other.image) for other in others)


def test_plain_scenes_stay_what_they_were() -> None:
    digest = hashlib.sha256()
    for index in range(50):
        scene = render_scene(0, index)
        digest.update(scene.image.tobytes())
        digest.update(scene.caption.encode())
    # the first 50 scenes of stream 0 as rendered before the clutter variant existed
    assert digest.hexdigest() == "a66a449b46d43f46ffc3df728455eda8bb90bca40abe50c60285bdb418f4c394"


@pytest.mark.parametrize("size", [32, 64])
def test_masks_match_pixels(size: int) -> None:
    for index in range(100):
        scene = render_scene(0, index, size=size)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.objects) <= 3
        assert len({obj.colour for obj in scene.objects}) == len(scene.objects)
        covered = np.zeros((size, size), dtype=bool)
        for obj in scene.objects:
            assert obj.shape in SHAPES and obj.colour in COLOURS
            assert obj.mask.shape == (size, size) and obj.mask.dtype == bool
            assert obj.mask.sum() >= (9 * size / 32) ** 2 / 2 - size / 8  # smallest triangle stays visible
            assert not (covered & obj.mask).any()
            assert (scene.image[obj.mask] == COLOURS[obj.colour]).all()
            covered |= obj.mask
        assert (scene.image[~covered] == BACKGROUND).all()
        assert scene.label_map().max() == len(scene.objects)


def test_captions_name_the_objects_in_order() -> None:
    scene = render_scene(1, 5)
    assert scene.caption == caption_for(scene.objects)
    assert parse_caption(scene.caption) == [ObjectSpec(o.shape, o.colour) for o in scene.objects]
    assert set(scene.caption.split()) <= set(CAPTION_WORDS)
    assert scene.objects[0].word == scene.objects[0].shape
    assert scene.objects[0].modifiers == (scene.objects[0].colour,)
    assert parse_caption("A Red circle and a blue  square") == [
        ObjectSpec("circle", "red"),
        ObjectSpec("square", "blue"),
    ]
    with pytest.raises(ValueError):
        parse_caption("a purple circle")


def test_object_counts_shapes_and_colours_all_occur() -> None:
    scenes = [render_scene(2, i) for i in range(300)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)


def test_drawn_objects_recover_the_true_masks() -> None:
    for index in range(50):
        scene = render_scene(5, index)
        for found, obj in zip(find_drawn_objects(scene.image, scene.objects), scene.objects, strict=True):
            assert found.drawn and np.array_equal(found.mask, obj.mask)


def test_drawn_objects_tolerate_noise_and_spot_missing_objects() -> None:
    scene = render_scene(6, 2)
    rng = np.random.default_rng(0)
    noisy = np.clip(scene.image + rng.normal(0, 25, scene.image.shape), 0, 255).astype(np.uint8)
    for found, obj in zip(find_drawn_objects(noisy, scene.objects), scene.objects, strict=True):
        assert found.drawn
        assert (found.mask & obj.mask).sum() / (found.mask | obj.mask).sum() > 0.9
    absent = next(c for c in COLOURS if c not in {o.colour for o in scene.objects})
    missing = find_drawn_objects(noisy, [ObjectSpec("circle", absent)])[0]
    assert not missing.drawn and not missing.mask.any()


def test_speckle_noise_is_not_an_object() -> None:
    rng = np.random.default_rng(1)
    speckle = (rng.integers(0, 2, (32, 32, 3)) * 255).astype(np.uint8)
    assert not any(f.drawn for f in find_drawn_objects(speckle, [ObjectSpec("square", c) for c in COLOURS]))


# --- clutter -----------------------------------------------------------------------------------------------------


def _shape_of_region(scene, mask: np.ndarray) -> str:  # type: ignore[no-untyped-def]
    return max(scene.objects, key=lambda o: (o.mask & mask).sum() / (o.mask | mask).sum()).shape


def test_clutter_drawn_objects_are_matched_by_shape() -> None:
    for index in range(60):
        scene = render_clutter_scene(7, index)
        found = find_drawn_objects(scene.image, scene.objects, variant="clutter")
        for obj, f in zip(scene.objects, found, strict=True):
            assert f.drawn and f.shape == obj.shape
            # the region is one of the scene's objects of that shape (two squares may swap regions)
            assert any(np.array_equal(f.mask, o.mask) for o in scene.objects if o.shape == obj.shape)
            assert _shape_of_region(scene, f.mask) == obj.shape


def test_clutter_objects_the_image_lacks_are_not_drawn() -> None:
    scene = render_clutter_scene(7, 3)
    colour = scene.objects[0].colour
    other = next(c for c in HUES if abs(HUES[c] - HUES[colour]) >= 90 and abs(HUES[c] - HUES[colour]) <= 270)
    assert not any(
        f.drawn for f in find_drawn_objects(scene.image, [ObjectSpec("ring", other)], variant="clutter")
    )
    # more objects named than drawn: the extra one finds no region
    named = [*scene.objects, *scene.objects, *scene.objects]
    found = find_drawn_objects(scene.image, named, variant="clutter")
    assert sum(f.drawn for f in found) == len(scene.objects)
    with pytest.raises(ValueError, match="unknown clutter colour"):
        find_drawn_objects(scene.image, [ObjectSpec("ring", "white")], variant="clutter")


def test_clutter_scenes_are_deterministic_and_differ_from_plain() -> None:
    first, again = render_clutter_scene(3, 17), render(3, 17, variant="clutter")
    assert np.array_equal(first.image, again.image) and first.caption == again.caption
    assert first.variant == "clutter" and render(3, 17).variant == "plain"
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first.objects, again.objects, strict=True))
    assert not np.array_equal(first.image, render_clutter_scene(3, 18).image)
    assert not np.array_equal(first.image, render_clutter_scene(4, 17).image)
    with pytest.raises(ValueError, match="unknown ShapesBench variant 'busy'"):
        render(3, 17, variant="busy")


@pytest.mark.parametrize("size", [32, 64])
def test_clutter_objects_masks_and_distractors(size: int) -> None:
    sides = []
    for index in range(200):
        scene = render_clutter_scene(0, index, size=size)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        assert 2 <= len(scene.objects) <= 4 and 0 <= len(scene.distractors) <= 2
        assert len({obj.colour for obj in scene.objects}) == 1  # only shape tells the objects apart
        colour = scene.image[scene.objects[0].mask][0]
        covered = np.zeros((size, size), dtype=bool)
        for obj in [*scene.objects, *scene.distractors]:
            mask = obj if isinstance(obj, np.ndarray) else obj.mask
            assert mask.any() and not (covered & mask).any()
            covered |= mask
        for obj in scene.objects:
            assert obj.shape in CLUTTER_SHAPES and obj.colour in HUES
            assert (scene.image[obj.mask] == colour).all()
            x0, y0, x1, y1 = obj.box
            sides.append(max(x1 - x0, y1 - y0) * 32 / size)
        labels = scene.label_map()
        assert labels.max() == len(scene.objects) and not labels[np.any(scene.distractors, axis=0)].any()
        background = scene.image[~covered].astype(int)
        assert background.std(axis=0).mean() > 10  # textured, not flat
    assert min(sides) >= 4.5 and max(sides) <= 10.5  # 5-10 px at 32 px, scaled with the size


def test_clutter_counts_shapes_and_captions() -> None:
    scenes = [render_clutter_scene(2, i) for i in range(300)]
    assert {len(s.objects) for s in scenes} == {2, 3, 4}
    assert {len(s.distractors) for s in scenes} == {0, 1, 2}
    assert {o.shape for s in scenes for o in s.objects} == set(CLUTTER_SHAPES) == set(shapes_of("clutter"))
    assert len({s.objects[0].colour for s in scenes}) == len(HUES)
    scene = scenes[0]
    assert parse_caption(scene.caption, "clutter") == [ObjectSpec(o.shape, o.colour) for o in scene.objects]
    assert set(scene.caption.split()) <= set(CLUTTER_CAPTION_WORDS)
    with pytest.raises(ValueError):
        parse_caption("a red ring")  # not a plain ShapesBench caption
    assert shapes_of("plain") == SHAPES


@pytest.mark.parametrize("size", [32, 64])
def test_crowd_scenes_follow_the_clutter_rules_with_more_objects(size: int) -> None:
    sides, counts = [], set()
    for index in range(150):
        scene = render_crowd_scene(0, index, size=size)
        assert scene.variant == "crowd" and scene.image.shape == (size, size, 3)
        assert 4 <= len(scene.objects) <= 8 and 0 <= len(scene.distractors) <= 2
        counts.add(len(scene.objects))
        assert len({obj.colour for obj in scene.objects}) == 1
        covered = np.zeros((size, size), dtype=bool)
        for mask in [o.mask for o in scene.objects] + list(scene.distractors):
            assert mask.any() and not (covered & mask).any()
            covered |= mask
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            sides.append(max(x1 - x0, y1 - y0) * 64 / size)
        assert parse_caption(scene.caption, "crowd") == [ObjectSpec(o.shape, o.colour) for o in scene.objects]
    assert counts == {4, 5, 6, 7, 8} == set(range(4, max_objects("crowd") + 1))
    assert min(sides) >= 5 and max(sides) <= 24.5  # 6-24 px at 64 px, scaled with the size
    assert render(0, 3, size, "crowd").caption == render_crowd_scene(0, 3, size).caption
    assert shapes_of("crowd") == CLUTTER_SHAPES and max_objects("clutter") == 4 and max_objects("plain") == 3


def test_a_long_stream_renders_over_processes_into_the_same_scenes(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from freeatm.runtime import shapes

    monkeypatch.setattr(shapes, "_SCENES_PER_PROCESS", 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    scenes = render_stream(5, 24, 64, "crowd")  # two processes
    assert [s.index for s in scenes] == list(range(24))
    for scene in scenes:
        alone = render(5, scene.index, 64, "crowd")
        assert scene.caption == alone.caption and (scene.image == alone.image).all()
        assert (scene.label_map() == alone.label_map()).all()


def test_mechanism_check_holds_on_clutter_and_fails_on_plain() -> None:
    clutter = mechanism_check("clutter", 400)
    assert clutter.view_miss_share >= MIN_VIEW_MISS and clutter.pair_disjoint_share >= MIN_PAIR_DISJOINT
    assert clutter.passed and clutter.pairs == 1600 and clutter.visible_share == 0.3
    assert clutter.scale == (0.08, 1.0)  # the contrastive baseline's RandomResizedCrop
    plain = mechanism_check("plain", 200)
    assert not plain.passed and plain.pair_disjoint_share < MIN_PAIR_DISJOINT


def test_mechanism_check_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--images", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "views that miss every object" in out[1]
    assert json.loads(out[-1])["passed"] is True
    assert main(["--variant", "plain", "--images", "64"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", "0"])
    assert exit_info.value.code == 2


def test_clutter_prompt_preset_follows_the_clutter_scenes() -> None:
    from freeatm.api.synthetic_dataset import Prompts
    from freeatm.runtime.generate.prompts import prompt_source

    source = prompt_source(Prompts(preset="shapes-clutter"), seed=7)
    assert source.classes == list(CLUTTER_SHAPES)
    for i in range(10):
        item, scene = source.item(i), render_clutter_scene(7, i)
        assert item.prompt == scene.caption
        assert [(o.word, o.cls, o.modifiers) for o in item.objects] == [
            (o.shape, o.shape, (o.colour,)) for o in scene.objects
        ]
