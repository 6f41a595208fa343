"""Tiny on-disk datasets in the exact layouts the EvalJob readers accept (built by the tests, never downloaded).

Every image is a ShapesBench scene (so probes and detectors have something learnable); shapes map to a real class
of each dataset (VOC: circle=person, square=car, triangle=dog; COCO: non-contiguous category ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from freeatm.runtime import shapes
from freeatm.runtime.dataset_format import (
    FORMAT,
    IMAGE,
    MANIFEST,
    MASK,
    RECORD,
    png_bytes,
    sample_key,
    shard_name,
    write_shard,
)

VOC_OF_SHAPE = {"circle": "person", "square": "car", "triangle": "dog"}
VOC_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
COCO_CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 11, "name": "triangle"}]


def scenes(seed: int, count: int, size: int = 48) -> list[shapes.Scene]:
    return [shapes.render_scene(seed, i, size) for i in range(count)]


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 entries."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_voc(root: Path, per_split: int = 8, size: int = 48) -> Path:
    """VOCdevkit/VOC2012 with JPEGImages, SegmentationClass, Annotations and ImageSets/{Main,Segmentation}."""
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Main", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 11), ("val", 12)):
        ids = []
        for scene in scenes(seed, per_split, size):
            image_id = f"2008_{seed:02d}{scene.index:04d}"
            ids.append(image_id)
            Image.fromarray(scene.image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            labels = np.zeros((size, size), dtype=np.uint8)
            objects_xml = []
            for obj in scene.objects:
                name = VOC_OF_SHAPE[obj.shape]
                labels[obj.mask] = VOC_NAMES.index(name) + 1
                x0, y0, x1, y1 = obj.box
                objects_xml.append(
                    f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                    f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                )
            labels[0, :] = 255  # a void border row, as VOC draws around objects
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", labels)
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
                f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
                f"<segmented>1</segmented>{''.join(objects_xml)}</annotation>"
            )
        text = "\n".join(ids) + "\n"
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(text)
    return root


def make_coco(root: Path, per_split: int = 8, size: int = 48) -> Path:
    """annotations/instances_<split>.json and captions_<split>.json, images in <split>/ (one crowd box in val)."""
    ids = {c["name"]: c["id"] for c in COCO_CATEGORIES}
    for split, seed in (("train", 21), ("val", 22)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations, captions = [], [], []
        for scene in scenes(seed, per_split, size):
            image_id = 1000 + seed * 100 + scene.index  # not 1..N: the reader must keep COCO's ids apart
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(scene.image).save(root / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for obj in scene.objects:
                x0, y0, x1, y1 = obj.box
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": ids[obj.shape],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": float(obj.mask.sum()),
                        "iscrowd": 0,
                        "segmentation": [],
                    }
                )
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": scene.caption})
        if split == "val":
            annotations[0]["iscrowd"] = 1
        common = {"info": {"description": "freeatm test fixture"}, "licenses": [], "images": images}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({**common, "annotations": annotations, "categories": COCO_CATEGORIES})
        )
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({**common, "annotations": captions})
        )
    return root


def make_imagefolder(root: Path, per_split: int = 12, size: int = 32) -> Path:
    for split, seed in (("train", 31), ("val", 32)):
        for scene in scenes(seed, per_split, size):
            largest = max(scene.objects, key=lambda o: int(o.mask.sum()))
            path = root / split / largest.shape / f"{scene.index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scene.image).save(path)
    return root


def make_ade20k(root: Path, per_split: int = 4, size: int = 48) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation}; label = shape index + 1 (1..3), 0 = other."""
    base = root / "ADEChallengeData2016"
    for folder, seed in (("training", 41), ("validation", 42)):
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for scene in scenes(seed, per_split, size):
            stem = f"ADE_{'train' if folder == 'training' else 'val'}_{scene.index + 1:08d}"
            Image.fromarray(scene.image).save(base / "images" / folder / f"{stem}.jpg", quality=95)
            labels = np.ones((size, size), dtype=np.uint8)  # 1 = "wall" as background stuff
            for obj in scene.objects:
                labels[obj.mask] = 2 + shapes.SHAPES.index(obj.shape)
            labels[:2] = 0  # "other": ignored
            Image.fromarray(labels, mode="L").save(base / "annotations" / folder / f"{stem}.png")
    return root


def make_cityscapes(root: Path, per_split: int = 4, size: int = 48) -> Path:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png."""
    label_ids = {"circle": 24, "square": 26, "triangle": 33}  # person, car, bicycle
    for split, seed, city in (("train", 51, "aachen"), ("val", 52, "frankfurt")):
        for scene in scenes(seed, per_split, size):
            stem = f"{city}_{scene.index:06d}_000019"
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scene.image).save(img)
            labels = np.full((size, size), 7, dtype=np.uint8)  # road
            for obj in scene.objects:
                labels[obj.mask] = label_ids[obj.shape]
            labels[-2:] = 1  # ego vehicle: ignored
            lbl = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels, mode="L").save(lbl)
    return root


def make_synthetic(
    root: Path, per_split: int = 8, size: int = 32, variant: str = "clutter", shard_size: int = 4
) -> Path:
    """<root>/{train,val}/: SyntheticDataset outputs (docs/dataset-format.md) of ShapesBench scenes, the true
    instance maps as their masks."""
    classes = list(shapes.shapes_of(variant))
    for split, seed in (("train", 21), ("val", 22)):
        base = root / split
        (base / "shards").mkdir(parents=True, exist_ok=True)
        entries = []
        for first in range(0, per_split, shard_size):
            count = min(shard_size, per_split - first)
            samples = []
            for index in range(first, first + count):
                scene = shapes.render(seed, index, size, variant)
                objects = [
                    {"word": o.shape, "label": k, "class": o.shape, "modifiers": [o.colour]}
                    for k, o in enumerate(scene.objects, start=1)
                ]
                record = {"index": index, "seed": seed, "prompt": scene.caption, "objects": objects}
                members = {
                    IMAGE: png_bytes(scene.image),
                    MASK: png_bytes(scene.label_map().astype(np.uint8)),
                    RECORD: json.dumps(record).encode(),
                }
                samples.append((sample_key(index), members))
            name = shard_name(first // shard_size)
            with (base / name).open("wb") as f:
                sha256, size_bytes = write_shard(f, samples)
            entries.append({"name": name, "samples": count, "sha256": sha256, "bytes": size_bytes})
        manifest = {
            "format": FORMAT,
            "images": per_split,
            "resolution": size,
            "maskResolution": size,
            "shardSize": shard_size,
            "hasMasks": True,
            "classes": classes,
            "shards": entries,
        }
        (base / MANIFEST).write_text(json.dumps(manifest))
    return root
