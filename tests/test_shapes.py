"""ShapesBench scenes: deterministic, masks that match the pixels, and drawn-object recovery."""

from __future__ import annotations

import numpy as np
import pytest

from freeatm.runtime.shapes import (
    BACKGROUND,
    CAPTION_WORDS,
    COLOURS,
    SHAPES,
    ObjectSpec,
    caption_for,
    find_drawn_objects,
    parse_caption,
    render_scene,
)


def test_scenes_are_deterministic_per_seed_and_index() -> None:
    first, again = render_scene(3, 17), render_scene(3, 17)
    assert np.array_equal(first.image, again.image)
    assert first.caption == again.caption
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first.objects, again.objects, strict=True))
    others = [render_scene(3, 18), render_scene(4, 17)]
    assert all(not np.array_equal(first.image, other.image) for other in others)


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
