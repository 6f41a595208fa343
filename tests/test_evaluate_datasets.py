"""EvalJob dataset readers on tiny fixtures in the real on-disk layouts, and their errors naming the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_fixtures as fx  # noqa: E402

from freeatm.runtime.errors import InvalidInput  # noqa: E402
from freeatm.runtime.evaluate.datasets import IGNORE, check_same_classes, open_split  # noqa: E402


def uri(path: Path) -> str:
    return path.as_uri()


def test_imagefolder(tmp_path: Path) -> None:
    root = fx.make_imagefolder(tmp_path / "if")
    train = open_split("imagefolder", uri(root), "train", "classification")
    val = open_split("imagefolder", uri(root), "val", "classification", max_images=5)
    assert train.classes == sorted({p.name for p in (root / "train").iterdir()})
    assert len(train) == 12 and len(val) == 5
    image = train.samples[0].load_image()
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert {s.label for s in train.samples} <= set(range(len(train.classes)))


def test_imagefolder_class_mismatch_and_missing_split(tmp_path: Path) -> None:
    root = fx.make_imagefolder(tmp_path / "if")
    (root / "val" / "hexagon").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "val" / "hexagon" / "x.png")
    train = open_split("imagefolder", uri(root), "train", "classification")
    val = open_split("imagefolder", uri(root), "val", "classification")
    with pytest.raises(InvalidInput, match=r"class list mismatch.*hexagon"):
        check_same_classes(train, val)
    with pytest.raises(InvalidInput, match=r"test.*split 'test' not found.*train, val"):
        open_split("imagefolder", uri(root), "test", "classification")


def test_voc_segmentation_and_detection(tmp_path: Path) -> None:
    root = fx.make_voc(tmp_path / "voc")
    seg = open_split("voc", uri(root), "train", "segmentation")
    assert seg.classes[0] == "background" and seg.classes[15] == "person" and len(seg.classes) == 21
    mask = seg.samples[0].load_mask()  # type: ignore[misc]
    assert mask.shape == (48, 48) and (mask[0] == IGNORE).all()
    assert set(np.unique(mask)) <= {0, 7, 12, 15, IGNORE}
    det = open_split("voc", uri(root), "val", "detection")
    assert len(det.classes) == 20 and len(det) == 8
    s = det.samples[0]
    scene = fx.scenes(12, 1)[0]
    assert s.size == (48, 48)
    # VOC's 1-based inclusive boxes come back as 0-based, end-exclusive pixel boxes.
    assert s.boxes == [tuple(float(v) for v in o.box) for o in scene.objects]
    assert [det.classes[i] for i in s.box_labels] == [fx.VOC_OF_SHAPE[o.shape] for o in scene.objects]


def test_voc_errors_name_the_file(tmp_path: Path) -> None:
    root = fx.make_voc(tmp_path / "voc")
    voc = root / "VOCdevkit" / "VOC2012"
    with pytest.raises(
        InvalidInput, match=r"ImageSets/Segmentation/test\.txt: split 'test' not found.*train, val"
    ):
        open_split("voc", uri(root), "test", "segmentation")
    xml = sorted((voc / "Annotations").glob("*.xml"))[0]
    xml.write_text(
        xml.read_text()
        .replace("<name>person</name>", "<name>unicorn</name>")
        .replace("<name>car</name>", "<name>unicorn</name>")
        .replace("<name>dog</name>", "<name>unicorn</name>")
    )
    with pytest.raises(InvalidInput, match=rf"{xml.name}: class list mismatch: object class 'unicorn'"):
        open_split("voc", uri(root), "train", "detection")
    xml.write_text("<annotation><object>")
    with pytest.raises(InvalidInput, match=rf"{xml.name}: corrupt annotation"):
        open_split("voc", uri(root), "train", "detection")
    xml.write_text("")
    with pytest.raises(InvalidInput, match=rf"{xml.name}: empty annotation"):
        open_split("voc", uri(root), "train", "detection")
    png = sorted((voc / "SegmentationClass").glob("*.png"))[0]
    fx.write_palette_png(png, np.full((48, 48), 42, np.uint8))
    split = open_split("voc", uri(root), "train", "segmentation")
    with pytest.raises(InvalidInput, match=rf"{png.name}: class list mismatch: label values \[42\]"):
        split.samples[0].load_mask()  # type: ignore[misc]
    png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InvalidInput, match=rf"{png.name}: corrupt or empty annotation"):
        split.samples[0].load_mask()  # type: ignore[misc]


def test_coco(tmp_path: Path) -> None:
    root = fx.make_coco(tmp_path / "coco")
    det = open_split("coco", uri(root), "val", "detection")
    assert det.classes == ["circle", "square", "triangle"]
    assert det.samples[0].crowd[0] is True
    scene = fx.scenes(22, 1)[0]
    assert det.samples[0].boxes == [tuple(float(v) for v in o.box) for o in scene.objects]
    ret = open_split("coco", uri(root), "train", "retrieval")
    assert ret.samples[0].captions == [fx.scenes(21, 1)[0].caption]


def test_coco_errors(tmp_path: Path) -> None:
    root = fx.make_coco(tmp_path / "coco")
    with pytest.raises(
        InvalidInput, match=r"instances_test\.json: split 'test' not found.*instances_val\.json"
    ):
        open_split("coco", uri(root), "test", "detection")
    path = root / "annotations" / "instances_val.json"
    doc = json.loads(path.read_text())
    doc["annotations"][1]["category_id"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(
        InvalidInput, match=r"instances_val\.json: class list mismatch: annotation 2 has category_id 99"
    ):
        open_split("coco", uri(root), "val", "detection")
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"instances_val\.json: corrupt annotation \(not JSON"):
        open_split("coco", uri(root), "val", "detection")
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": fx.COCO_CATEGORIES}))
    with pytest.raises(InvalidInput, match=r"instances_val\.json: empty annotation"):
        open_split("coco", uri(root), "val", "detection")
    train = open_split("coco", uri(root), "train", "detection")
    doc["categories"] = fx.COCO_CATEGORIES[:2]
    doc["annotations"] = []
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match=r"class list mismatch.*only in train: \['triangle'\]"):
        check_same_classes(train, open_split("coco", uri(root), "val", "detection"))


def test_ade20k(tmp_path: Path) -> None:
    root = fx.make_ade20k(tmp_path / "ade")
    val = open_split("ade20k", uri(root), "val", "segmentation")
    assert len(val.classes) == 150 and len(val) == 4
    mask = val.samples[0].load_mask()  # type: ignore[misc]
    assert (mask[:2] == IGNORE).all() and set(np.unique(mask[2:])) <= {0, 1, 2, 3}
    with pytest.raises(InvalidInput, match=r"images/test: split 'test' not found.*training, validation"):
        open_split("ade20k", uri(root), "test", "segmentation")


def test_cityscapes(tmp_path: Path) -> None:
    root = fx.make_cityscapes(tmp_path / "cs")
    train = open_split("cityscapes", uri(root), "train", "segmentation")
    assert len(train.classes) == 19 and train.samples[0].id.startswith("aachen/")
    mask = train.samples[0].load_mask()  # type: ignore[misc]
    # labelIds -> trainIds: road 7 -> 0, person 24 -> 11, car 26 -> 13, bicycle 33 -> 18; ego vehicle ignored
    assert set(np.unique(mask)) <= {0, 11, 13, 18, IGNORE} and (mask[-2:] == IGNORE).all()
    lbl = next((root / "gtFine" / "val").rglob("*_labelIds.png"))
    lbl.unlink()
    with pytest.raises(InvalidInput, match=rf"{lbl.name}: annotation file missing"):
        open_split("cityscapes", uri(root), "val", "segmentation")


def test_shapesbench_is_deterministic_with_true_labels() -> None:
    a = open_split("shapes", "toy://shapesbench/val", "val", "classification", max_images=6)
    b = open_split("shapes", "toy://shapesbench/val?images=6", "val", "classification")
    assert [s.label for s in a.samples] == [s.label for s in b.samples]
    assert np.array_equal(a.samples[3].load_image(), b.samples[3].load_image())
    seg = open_split("shapes", "toy://shapesbench/val?images=4&size=48", "train", "segmentation")
    assert seg.classes == ["background", "circle", "square", "triangle"]
    assert seg.samples[0].load_mask().shape == (48, 48)  # type: ignore[misc]
    det = open_split("shapes", "toy://shapesbench/val", "val", "detection", max_images=2)
    assert det.samples[0].boxes and len(det.samples[0].boxes) == len(det.samples[0].box_labels)
    with pytest.raises(InvalidInput, match=r"split 'dev' not found"):
        open_split("shapes", "toy://shapesbench/dev", "dev", "classification")


def test_missing_root_and_corrupt_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"does not exist"):
        open_split("voc", uri(tmp_path / "nowhere"), "train", "segmentation")
    root = fx.make_imagefolder(tmp_path / "if")
    bad = next((root / "train").rglob("*.png"))
    bad.write_bytes(b"not an image")
    split = open_split("imagefolder", uri(root), "train", "classification")
    sample = next(s for s in split.samples if s.id.endswith(bad.name) and bad.parent.name in s.id)
    with pytest.raises(InvalidInput, match=rf"{bad.name}: corrupt or unreadable image"):
        sample.load_image()


def test_voc_from_s3_is_synced_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FREEATM_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    root = fx.make_voc(tmp_path / "voc", per_split=3)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        for path in root.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "bench", f"data/voc/{path.relative_to(root)}")
        split = open_split("voc", "s3://bench/data/voc", "val", "segmentation")
        assert len(split) == 3 and str(tmp_path / "cache") in split.where
        assert split.samples[0].load_mask().shape == (48, 48)  # type: ignore[misc]
        with pytest.raises(InvalidInput, match=r"s3://bench/data/nothing is empty or does not exist"):
            open_split("voc", "s3://bench/data/nothing", "val", "segmentation")


def test_missing_image_fails_when_the_split_is_opened(tmp_path: Path) -> None:
    root = fx.make_voc(tmp_path / "voc", per_split=2)
    image = sorted((root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[-1]
    image.unlink()
    with pytest.raises(InvalidInput, match=rf"{image.name}: image file missing"):
        open_split("voc", uri(root), "val", "detection")
