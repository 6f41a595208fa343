"""Readers for the downstream datasets an EvalJob names, in the on-disk layouts users already have.

Every reader returns a :class:`Split`: the class names and a list of :class:`Sample` records whose pixels and
label maps are decoded on demand. One reader per format:

- ``imagefolder``  ``<root>/<split>/<class>/<image>`` (torchvision ImageFolder)
- ``voc``          PASCAL VOC: ``JPEGImages/``, ``SegmentationClass/*.png`` (palette PNG, 255 = void),
                   ``Annotations/*.xml``, ``ImageSets/{Main,Segmentation}/<split>.txt``; the root may also be
                   a ``VOCdevkit`` holding ``VOC2012`` or ``VOC2007``
- ``coco``         ``annotations/instances_<split>.json`` (and ``captions_<split>.json`` for retrieval) with
                   the images in ``<split>/``, ``<split>2017/``, ``images/<split>/`` or ``images/``
- ``ade20k``       ``ADEChallengeData2016/{images,annotations}/{training,validation}/`` (label 0 = "other",
                   ignored; k = class k-1; names from ``objectInfo150.csv`` when present)
- ``cityscapes``   ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
                   ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 train ids (255 = ignore)
- ``shapes``       ``toy://shapesbench/<split>[?variant=plain|clutter&images=N&size=S]``: ShapesBench scenes
                   rendered on the fly (:mod:`freeatm.runtime.shapes`); the image label is the shape of the
                   largest object, segmentation classes are background + the shapes (3 plain, 6 clutter),
                   boxes are the objects' extents, objects are the true instance masks. Splits
                   train/val/test are disjoint streams (seeds 1000/1001/1002; default 512/256/256 images of
                   32 px); the URI's path names the scored split, the probe trains on trainSplit
- ``synthetic``    what a SyntheticDataset writes (docs/dataset-format.md), one dataset per split:
                   ``<root>/<split>/manifest.json`` and its shards; objects are the label map's instances
                   with the class of their record, segmentation classes are background + the manifest's
                   ``classes``

Dataset URIs on s3:// are copied to the local cache first (:func:`freeatm.runtime.storage.sync_to_cache`).
Every problem with the data raises :class:`InvalidInput` naming the file at fault.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..dataset_format import IMAGE, MANIFEST, MASK, RECORD, check_manifest, verified_samples
from ..errors import InvalidInput
from ..storage import sync_to_cache

Task = Literal["classification", "segmentation", "detection", "retrieval", "objects"]
IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Cityscapes labelId -> trainId (cityscapesScripts helpers/labels.py); every other id is ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
ADE20K_CLASSES = 150

SHAPES_SEEDS = {"train": 1000, "val": 1001, "test": 1002}
SHAPES_DEFAULT_IMAGES = {"train": 512, "val": 256, "test": 256}
SHAPES_DEFAULT_SIZE = 32


@dataclass
class Sample:
    """One image and its annotations; pixels and label maps are decoded by the loaders on demand."""

    id: str
    load_image: Callable[[], np.ndarray]
    """Returns the RGB image as uint8 H x W x 3."""
    label: int | None = None
    """classification: class index."""
    load_mask: Callable[[], np.ndarray] | None = None
    """segmentation: H x W int64 class indices, IGNORE where unlabelled."""
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    """detection: (x0, y0, x1, y1) in pixels of the original image."""
    box_labels: list[int] = field(default_factory=list)
    """detection: class index of each box."""
    crowd: list[bool] = field(default_factory=list)
    """detection: boxes the score ignores (COCO iscrowd, VOC difficult)."""
    captions: list[str] = field(default_factory=list)
    """retrieval: the captions of the image."""
    load_instances: Callable[[], np.ndarray] | None = None
    """objects: H x W int64 instance map, 0 = background, k = the k-th entry of object_labels."""
    object_labels: list[int] = field(default_factory=list)
    """objects: class index of each object, in instance order."""
    object_records: list[dict[str, Any]] = field(default_factory=list)
    """objects: each object's record in instance order (word, modifiers, label), naming its phrase in the
    image's caption (captions[0]) for the text-tower protocols."""
    size: tuple[int, int] | None = None
    """(height, width) when the annotations tell it without decoding the image."""


@dataclass
class Split:
    """A split of a dataset prepared for one task."""

    name: str
    where: str
    """The location shown in messages (a path or toy:// URI)."""
    classes: list[str]
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------------------------- entry point


def open_split(
    fmt: str, uri: str, split: str, task: Task, max_images: int | None = None, cache_dir: Path | None = None
) -> Split:
    """The `split` of the dataset at `uri` in layout `fmt`, prepared for `task`, cut to `max_images`."""
    if fmt == "shapes":
        result = _shapes(uri, split, task)
    else:
        if urlsplit(uri).scheme == "toy":
            raise InvalidInput(f"{uri}: toy:// datasets have format shapes, not {fmt}")
        root = sync_to_cache(uri, cache_dir)
        reader = _READERS.get(fmt)
        if reader is None:
            raise InvalidInput(f"{uri}: unknown dataset format {fmt!r}")
        result = reader(root, split, task)
    if not result.samples:
        raise InvalidInput(f"{result.where}: split {split!r} holds no images")
    if max_images is not None:
        result.samples = result.samples[:max_images]
    return result


def check_same_classes(train: Split, val: Split) -> None:
    """Both splits must name the same classes in the same order (the head is trained on one, scored on the other)."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        detail = (
            f"only in {train.name}: {only_train or '-'}; only in {val.name}: {only_val or '-'}"
            if only_train or only_val
            else "same names in a different order"
        )
        raise InvalidInput(
            f"class list mismatch between {train.where} ({len(train.classes)} classes) and {val.where} "
            f"({len(val.classes)} classes): {detail}"
        )


# --------------------------------------------------------------------------------------------- decoding


def read_rgb(path: Path) -> np.ndarray:
    """uint8 H x W x 3; a file that is not an image raises InvalidInput naming it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise InvalidInput(f"{path}: image file missing") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InvalidInput(f"{path}: corrupt or unreadable image ({e})") from e


def read_label_png(path: Path) -> np.ndarray:
    """The raw index values of a label PNG (palette or 8/16-bit grey) as an int64 array."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise InvalidInput(
                    f"{path}: label map has mode {im.mode}; expected a palette (P) or greyscale (L) PNG of class indices"
                )
            return np.asarray(im).astype(np.int64)
    except FileNotFoundError as e:
        raise InvalidInput(f"{path}: annotation file missing") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InvalidInput(f"{path}: corrupt or empty annotation ({e})") from e


def _exists(path: Path) -> Path:
    """`path`, checked while the annotations are read (a missing image fails before any work starts)."""
    if not path.is_file():
        raise InvalidInput(f"{path}: image file missing (listed in the annotations)")
    return path


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = sorted({int(v) for v in np.unique(labels[bad])})[:10]
        raise InvalidInput(
            f"{path}: class list mismatch: label values {values} are outside the {num_classes} classes of the "
            f"dataset (0..{num_classes - 1}, {IGNORE} = ignore)"
        )
    return labels


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise InvalidInput(f"{path}: annotation file missing") from e
    if not text.strip():
        raise InvalidInput(f"{path}: empty annotation file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path}: corrupt annotation (not JSON: {e})") from e


def _split_list(path: Path, root: Path, split: str) -> list[str]:
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise InvalidInput(
            f"{path}: split {split!r} not found in {root}"
            + (f"; the dataset has: {', '.join(have)}" if have else "")
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise InvalidInput(f"{path}: split {split!r} lists no images")
    return ids


def _available(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
    return ", ".join(names) or "nothing"


def _need(task: Task, fmt: str, supported: tuple[str, ...]) -> None:
    if task not in supported:
        raise InvalidInput(f"format {fmt} has no {task} annotations; it serves: {', '.join(supported)}")


# --------------------------------------------------------------------------------------------- imagefolder


def _imagefolder(root: Path, split: str, task: Task) -> Split:
    _need(task, "imagefolder", ("classification",))
    base = root / split
    if not base.is_dir():
        raise InvalidInput(f"{base}: split {split!r} not found; {root} has: {_available(root)}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InvalidInput(f"{base}: no class folders (expected {base}/<class>/<image>)")
    samples = []
    for label, name in enumerate(classes):
        for path in sorted((base / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(str(path.relative_to(base)), lambda p=path: read_rgb(p), label=label))
    return Split(split, str(base), classes, samples)


# --------------------------------------------------------------------------------------------- PASCAL VOC


def _voc_root(root: Path) -> Path:
    for candidate in (
        root,
        root / "VOC2012",
        root / "VOC2007",
        root / "VOCdevkit" / "VOC2012",
        root / "VOCdevkit" / "VOC2007",
    ):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise InvalidInput(
        f"{root}: not a PASCAL VOC layout (no JPEGImages/ here, in VOC2012/ or in VOCdevkit/VOC2012/)"
    )


def _voc(root: Path, split: str, task: Task) -> Split:
    _need(task, "voc", ("segmentation", "detection"))
    voc = _voc_root(root)
    if task == "segmentation":
        ids = _split_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt", voc, split)
        classes = ["background", *VOC_CLASSES]
        samples = []
        for image_id in ids:
            mask_path = voc / "SegmentationClass" / f"{image_id}.png"
            if not mask_path.is_file():
                raise InvalidInput(
                    f"{mask_path}: annotation file missing (listed in ImageSets/Segmentation/{split}.txt)"
                )
            samples.append(
                Sample(
                    image_id,
                    lambda p=_exists(voc / "JPEGImages" / f"{image_id}.jpg"): read_rgb(p),
                    load_mask=lambda p=mask_path: _check_labels(read_label_png(p), len(classes), p),
                )
            )
        return Split(split, str(voc), classes, samples)
    ids = _split_list(voc / "ImageSets" / "Main" / f"{split}.txt", voc, split)
    samples = [_voc_detection_sample(voc, image_id) for image_id in ids]
    return Split(split, str(voc), list(VOC_CLASSES), samples)


def _voc_detection_sample(voc: Path, image_id: str) -> Sample:
    path = voc / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        raise InvalidInput(f"{path}: annotation file missing")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path}: empty annotation file")
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InvalidInput(f"{path}: corrupt annotation (not XML: {e})") from e
    try:
        size = tree.find("size")
        hw = (int(size.findtext("height")), int(size.findtext("width"))) if size is not None else None  # type: ignore[arg-type]
        boxes, labels, crowd = [], [], []
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise InvalidInput(
                    f"{path}: class list mismatch: object class {name!r} is not one of the 20 PASCAL VOC classes"
                )
            bb = obj.find("bndbox")
            if bb is None:
                raise InvalidInput(f"{path}: corrupt annotation: object {name!r} has no bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[arg-type]
            # VOC boxes are 1-based and inclusive: pixel columns xmin..xmax.
            boxes.append((x0 - 1, y0 - 1, x1, y1))
            labels.append(VOC_CLASSES.index(name))
            crowd.append(obj.findtext("difficult", "0").strip() == "1")
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{path}: corrupt annotation ({e})") from e
    return Sample(
        image_id,
        lambda p=_exists(voc / "JPEGImages" / f"{image_id}.jpg"): read_rgb(p),
        boxes=boxes,
        box_labels=labels,
        crowd=crowd,
        size=hw,
    )


# --------------------------------------------------------------------------------------------- COCO


def _coco_annotation_file(root: Path, kind: str, split: str) -> Path:
    names = (f"{kind}_{split}.json", f"{kind}_{split}2017.json")
    for directory in (root / "annotations", root):
        for name in names:
            if (directory / name).is_file():
                return directory / name
    have = (
        sorted(p.name for p in (root / "annotations").glob("*.json"))
        if (root / "annotations").is_dir()
        else []
    )
    raise InvalidInput(
        f"{root / 'annotations' / names[0]}: split {split!r} not found"
        + (f"; the dataset has: {', '.join(have)}" if have else "")
    )


def _coco_image_dir(root: Path, split: str, file_name: str) -> Path:
    for directory in (root / split, root / f"{split}2017", root / "images" / split, root / "images", root):
        if (directory / file_name).is_file():
            return directory
    raise InvalidInput(
        f"{root}: image {file_name!r} of split {split!r} not found in {split}/, {split}2017/, images/{split}/ or images/"
    )


def _coco(root: Path, split: str, task: Task) -> Split:
    _need(task, "coco", ("detection", "retrieval"))
    kind = "instances" if task == "detection" else "captions"
    path = _coco_annotation_file(root, kind, split)
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InvalidInput(f"{path}: corrupt annotation (no 'images' list)")
    if not doc["images"]:
        raise InvalidInput(f"{path}: empty annotation (no images)")
    try:
        images = {int(im["id"]): im for im in doc["images"]}
        image_dir = _coco_image_dir(root, split, doc["images"][0]["file_name"])
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        for ann in doc.get("annotations", []):
            if int(ann["image_id"]) not in per_image:
                raise InvalidInput(
                    f"{path}: annotation {ann.get('id')} refers to image {ann['image_id']}, which is not listed"
                )
            per_image[int(ann["image_id"])].append(ann)
        if task == "retrieval":
            samples = [
                Sample(
                    str(image_id),
                    lambda p=_exists(image_dir / im["file_name"]): read_rgb(p),
                    captions=[str(a["caption"]).strip() for a in per_image[image_id]],
                    size=(int(im["height"]), int(im["width"])) if "height" in im else None,
                )
                for image_id, im in sorted(images.items())
            ]
            samples = [s for s in samples if s.captions]
            return Split(split, str(path), [], samples)
        categories = sorted(doc.get("categories", []), key=lambda c: int(c["id"]))
        if not categories:
            raise InvalidInput(f"{path}: corrupt annotation (no categories)")
        index = {int(c["id"]): i for i, c in enumerate(categories)}
        samples = []
        for image_id, im in sorted(images.items()):
            boxes, labels, crowd = [], [], []
            for ann in per_image[image_id]:
                if int(ann["category_id"]) not in index:
                    raise InvalidInput(
                        f"{path}: class list mismatch: annotation {ann.get('id')} has category_id "
                        f"{ann['category_id']}, which is not in the file's categories"
                    )
                x, y, w, h = (float(v) for v in ann["bbox"])
                boxes.append((x, y, x + w, y + h))
                labels.append(index[int(ann["category_id"])])
                crowd.append(bool(ann.get("iscrowd", 0)))
            samples.append(
                Sample(
                    str(image_id),
                    lambda p=_exists(image_dir / im["file_name"]): read_rgb(p),
                    boxes=boxes,
                    box_labels=labels,
                    crowd=crowd,
                    size=(int(im["height"]), int(im["width"])),
                )
            )
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"{path}: corrupt annotation (missing or bad field {e})") from e
    return Split(split, str(path), [str(c["name"]) for c in categories], samples)


# --------------------------------------------------------------------------------------------- ADE20K


def _ade20k(root: Path, split: str, task: Task) -> Split:
    _need(task, "ade20k", ("segmentation",))
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    folder = {"train": "training", "val": "validation"}.get(split, split)
    images_dir, labels_dir = base / "images" / folder, base / "annotations" / folder
    if not images_dir.is_dir():
        raise InvalidInput(
            f"{images_dir}: split {split!r} not found; {base / 'images'} has: {_available(base / 'images')}"
        )
    classes = _ade20k_classes(base)
    samples = []
    for image in sorted(images_dir.glob("*.jpg")):
        label = labels_dir / f"{image.stem}.png"
        if not label.is_file():
            raise InvalidInput(f"{label}: annotation file missing for {image.name}")
        samples.append(
            Sample(image.stem, lambda p=image: read_rgb(p), load_mask=lambda p=label: _ade20k_mask(p))
        )
    return Split(split, str(images_dir), classes, samples)


def _ade20k_classes(base: Path) -> list[str]:
    info = base / "objectInfo150.csv"
    if info.is_file():
        with info.open(newline="") as f:
            names = [row.get("Name", "").split(";")[0] for row in csv.DictReader(f)]
        if len(names) != ADE20K_CLASSES:
            raise InvalidInput(
                f"{info}: class list mismatch: {len(names)} classes, ADE20K has {ADE20K_CLASSES}"
            )
        return names
    return [f"class{i}" for i in range(1, ADE20K_CLASSES + 1)]


def _ade20k_mask(path: Path) -> np.ndarray:
    raw = read_label_png(path)
    if raw.max(initial=0) > ADE20K_CLASSES:
        raise InvalidInput(
            f"{path}: class list mismatch: label value {int(raw.max())} exceeds the {ADE20K_CLASSES} ADE20K classes"
        )
    labels = raw - 1  # 0 = "other" is not scored
    labels[raw == 0] = IGNORE
    return labels


# --------------------------------------------------------------------------------------------- Cityscapes


def _cityscapes(root: Path, split: str, task: Task) -> Split:
    _need(task, "cityscapes", ("segmentation",))
    images_dir, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not images_dir.is_dir():
        raise InvalidInput(
            f"{images_dir}: split {split!r} not found; {root / 'leftImg8bit'} has: {_available(root / 'leftImg8bit')}"
        )
    lut = np.full(256, IGNORE, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    samples = []
    for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise InvalidInput(f"{label}: annotation file missing for {image.name}")
        samples.append(
            Sample(
                f"{image.parent.name}/{stem}",
                lambda p=image: read_rgb(p),
                load_mask=lambda p=label: _cityscapes_mask(p, lut),
            )
        )
    return Split(split, str(images_dir), list(CITYSCAPES_CLASSES), samples)


def _cityscapes_mask(path: Path, lut: np.ndarray) -> np.ndarray:
    raw = read_label_png(path)
    if raw.min(initial=0) < 0 or raw.max(initial=0) > 255:
        raise InvalidInput(f"{path}: class list mismatch: label ids must be 0..255 (Cityscapes labelIds)")
    return lut[raw]


# --------------------------------------------------------------------------------------------- ShapesBench


def _shapes(uri: str, split: str, task: Task) -> Split:
    from .. import shapes

    parts = urlsplit(uri)
    if parts.scheme != "toy" or parts.netloc != "shapesbench":
        raise InvalidInput(f"{uri}: format shapes reads toy://shapesbench/<split>")
    if split not in SHAPES_SEEDS:
        raise InvalidInput(f"{uri}: ShapesBench split {split!r} not found; it has: {', '.join(SHAPES_SEEDS)}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - {"variant", "images", "size"})
    if unknown:
        raise InvalidInput(
            f"{uri}: unknown parameter {', '.join(unknown)}; toy://shapesbench takes variant, images, size"
        )
    variant = query.get("variant", "plain")
    if variant not in shapes.VARIANTS:
        raise InvalidInput(
            f"{uri}: ShapesBench variant {variant!r} not found; it has: {', '.join(shapes.VARIANTS)}"
        )
    try:
        count = int(query.get("images", SHAPES_DEFAULT_IMAGES[split]))
        size = int(query.get("size", SHAPES_DEFAULT_SIZE))
    except ValueError as e:
        raise InvalidInput(f"{uri}: images and size must be integers ({e})") from e
    if count < 1 or size < 16:
        raise InvalidInput(f"{uri}: needs images >= 1 and size >= 16")
    seed = SHAPES_SEEDS[split]
    names = list(shapes.shapes_of(variant))
    classes = names if task in ("classification", "detection", "objects") else ["background", *names]
    samples = [
        _shapes_sample(scene, names, task) for scene in shapes.render_stream(seed, count, size, variant)
    ]
    # `where` tells scenes apart in the feature cache: the sample ids are the same in every variant and size.
    where = f"toy://shapesbench/{split}"
    if variant != "plain" or size != SHAPES_DEFAULT_SIZE:
        where += f"?variant={variant}&size={size}"
    return Split(split, where, classes if task != "retrieval" else [], samples)


def _shapes_sample(scene: Any, names: list[str], task: Task) -> Sample:
    image = scene.image
    sample = Sample(f"{scene.seed}-{scene.index}", lambda: image, size=image.shape[:2])
    if task == "classification":
        largest = max(scene.objects, key=lambda o: int(o.mask.sum()))
        sample.label = names.index(largest.shape)
    elif task == "segmentation":
        labels = np.zeros(image.shape[:2], dtype=np.int64)
        for obj in scene.objects:
            labels[obj.mask] = names.index(obj.shape) + 1
        sample.load_mask = lambda: labels
    elif task == "detection":
        sample.boxes = [tuple(float(v) for v in obj.box) for obj in scene.objects]  # type: ignore[misc]
        sample.box_labels = [names.index(obj.shape) for obj in scene.objects]
        sample.crowd = [False] * len(scene.objects)
    elif task == "objects":
        instances = scene.label_map()
        sample.load_instances = lambda: instances
        sample.object_labels = [names.index(obj.shape) for obj in scene.objects]
        sample.captions = [scene.caption]
        sample.object_records = [
            {"word": obj.word, "modifiers": list(obj.modifiers), "label": k}
            for k, obj in enumerate(scene.objects, start=1)
        ]
    else:
        sample.captions = [scene.caption]
    return sample


# --------------------------------------------------------------------------------------------- synthetic


def _synthetic(root: Path, split: str, task: Task) -> Split:
    _need(task, "synthetic", ("objects", "segmentation"))
    base = root / split
    path = base / MANIFEST
    if not path.is_file():
        raise InvalidInput(
            f"{path}: split {split!r} not found (a synthetic dataset per split: <root>/<split>/{MANIFEST}); "
            f"{root} has: {_available(root)}"
        )
    manifest = check_manifest(_read_json(path), str(path))
    if not manifest.get("hasMasks"):
        raise InvalidInput(f"{path}: the dataset has no masks (hasMasks: false)")
    classes = [str(c) for c in manifest.get("classes") or []]
    try:
        shards = [
            (s, _exists(base / str(s["name"]))) for s in manifest.get("shards") or [] if int(s["samples"]) > 0
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"{path}: corrupt shard list ({e})") from e
    samples = []
    for entry, shard in shards:
        with shard.open("rb") as stream:
            for raw in verified_samples(stream, entry, str(shard), str(base)):
                samples.append(_synthetic_sample(raw, classes, task, f"{shard}: sample {raw['__key__']}"))
    return Split(split, str(base), classes if task == "objects" else ["background", *classes], samples)


def _synthetic_sample(raw: dict[str, Any], classes: list[str], task: Task, where: str) -> Sample:
    """A sample of the undecoded tar members `raw`: its image and label map decode on demand."""
    prompt, records = _synthetic_record(raw, where)
    missing = sorted({str(o["class"]) for o in records} - set(classes))
    if missing:
        raise InvalidInput(f"{where}: class list mismatch: {missing} not in the manifest's classes {classes}")
    labels = [classes.index(str(o["class"])) for o in records]
    for member in (IMAGE, MASK):
        if member not in raw:
            raise InvalidInput(f"{where}: no .{member} member")

    def image() -> np.ndarray:
        return _decode(raw[IMAGE], where, "RGB")

    def instances() -> np.ndarray:
        mask = _decode(raw[MASK], where, None)
        height, width = image().shape[:2]
        if mask.shape != (height, width):  # masks may be stored at attention.maskResolution
            rows = np.arange(height) * mask.shape[0] // height
            cols = np.arange(width) * mask.shape[1] // width
            mask = mask[rows[:, None], cols[None, :]]
        if mask.max(initial=0) > len(labels):
            raise InvalidInput(
                f"{where}: label map holds label {int(mask.max())} but the record lists {len(labels)} objects"
            )
        return mask.astype(np.int64)

    sample = Sample(str(raw["__key__"]).rsplit("/", 1)[-1], image)
    if task == "objects":
        sample.load_instances, sample.object_labels = instances, labels
        sample.captions, sample.object_records = [prompt], records
    else:
        lut = np.array([0, *(c + 1 for c in labels)], dtype=np.int64)
        sample.load_mask = lambda: lut[instances()]
    return sample


def _decode(data: bytes, where: str, mode: str | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert(mode) if mode else im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{where}: corrupt or unreadable image or label map ({e})") from e


def _synthetic_record(raw: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """A sample record's prompt and its objects in label order."""
    try:
        record = json.loads(raw[RECORD])
        objects = sorted(record["objects"], key=lambda o: int(o["label"]))
        for o in objects:
            o["class"], o["word"] = str(o["class"]), str(o["word"])
        return str(record["prompt"]), objects
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInput(f"{where}: corrupt record (.json: {e})") from e


_READERS: dict[str, Callable[[Path, str, Task], Split]] = {
    "imagefolder": _imagefolder,
    "voc": _voc,
    "coco": _coco,
    "ade20k": _ade20k,
    "cityscapes": _cityscapes,
    "synthetic": _synthetic,
}
