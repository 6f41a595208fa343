"""ShapesBench mask scoring: the report, the scoring rule, and the trained toy model's acceptance bar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from freeatm.runtime.generate.prompts import LocatedObject
from freeatm.runtime.generate.sampler import Sample
from freeatm.runtime.shapes import render
from freeatm.runtime.shapesbench import masks as shapesbench_masks


@pytest.fixture
def cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    monkeypatch.setenv("FREEATM_CACHE_DIR", str(tmp_path))


def test_random_weights_report(cache, capsys) -> None:  # type: ignore[no-untyped-def]
    report = shapesbench_masks.score_masks("toy://shapes-random", 8, steps=2, batch_size=8)
    assert report["images"] == 8 and report["objects"] == sum(
        v["objects"] for v in report["perClass"].values()
    )
    assert set(report["perClass"]) == {"circle", "square", "triangle"}
    # random weights draw (almost) nothing
    assert 0.0 <= report["miou"] <= 0.3 and report["drawnShare"] <= 0.5
    shapesbench_masks.print_report(report)
    out = capsys.readouterr().out.strip().splitlines()
    assert "mIoU" in "\n".join(out)
    assert json.loads(out[-1])["miou"] == report["miou"]


@pytest.mark.parametrize("variant", ["plain", "clutter"])
def test_scoring_against_what_was_drawn(monkeypatch, cache, variant) -> None:  # type: ignore[no-untyped-def]
    """A sampler that 'draws' the true scene and returns its true labels scores IoU 1 and drawn share 1, in clutter
    scenes too, where identical objects may take either's region."""

    class PerfectSampler:
        def __init__(self, pipe, generation, attention, *a, **k):  # type: ignore[no-untyped-def]
            pass

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            return None

        def generate(self, items, indices, seeds):  # type: ignore[no-untyped-def]
            out = []
            for item, index, seed in zip(items, indices, seeds, strict=True):
                scene = render(shapesbench_masks.SCORE_STREAM, index, variant=variant)
                assert scene.caption == item.prompt
                objects = [LocatedObject(o.word, o.cls, o.modifiers, ()) for o in item.objects]
                labels = scene.label_map().astype(np.uint8)
                out.append(Sample(index, seed, item.prompt, objects, scene.image, labels, None, []))
            return out

    monkeypatch.setattr("freeatm.runtime.generate.sampler.Sampler", PerfectSampler)
    report = shapesbench_masks.score_masks("toy://shapes-random", 24, steps=1, variant=variant)
    assert report["variant"] == variant and report["drawnShare"] == 1.0 and report["miou"] == 1.0
    assert report["meanObjectIou"] == 1.0 and report["foregroundIou"] == 1.0
    assert len(report["perClass"]) == (6 if variant == "clutter" else 3)


@pytest.mark.slow
def test_trained_toy_model_masks(cache) -> None:  # type: ignore[no-untyped-def]
    """Acceptance, as `freeatm shapesbench masks --model toy://shapes --images 128` runs it.

    The committed weights measured mIoU 0.864 with 90% of the objects drawn; the bars leave room for
    floating-point differences between machines, not for a worse model.
    """
    report = shapesbench_masks.score_masks("toy://shapes", 128)
    assert report["drawnShare"] >= 0.85, report
    assert report["miou"] >= 0.75, report
    assert min(c["iou"] for c in report["perClass"].values()) >= 0.65, report
    random = shapesbench_masks.score_masks("toy://shapes-random", 16)
    assert random["miou"] < report["miou"] - 0.3


@pytest.mark.slow
def test_clutter_toy_model_masks(cache) -> None:  # type: ignore[no-untyped-def]
    """`toy://shapes-clutter` at the study's mask settings, as runtime/toy/README.md reports it (128 images, seed 1:
    99.5% drawn, mIoU 0.153, foreground IoU 0.286). It draws nearly everything; its masks are poor, and these bars
    only keep them from getting worse unnoticed."""
    from freeatm.runtime.shapesbench.study import PROTOCOL

    a = PROTOCOL["attention"]
    report = shapesbench_masks.score_masks(
        "toy://shapes-clutter", 64, seed=1, resolutions=a["resolutions"], modifiers=a["modifiers"]
    )
    assert report["variant"] == "clutter" and len(report["perClass"]) == 6
    assert report["drawnShare"] >= 0.95, report
    assert report["miou"] >= 0.11 and report["foregroundIou"] >= 0.22, report
