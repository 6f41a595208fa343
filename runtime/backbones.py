"""Vision backbones built from config (never downloaded), and the pretraining export that evaluation reads.

One factory over a fixed set of names (the contract shared by MaskPretrainJob and EvalJob, defined in
`freeatm.api.pretrain_job.BACKBONE_GEOMETRY`): the architecture and the geometry of its feature grid.

    resnet18, resnet50            torchvision ResNets, output stride 32 (the ImageNet stem: 7×7 stride-2 conv
                                  and max-pool)
    resnet18_os8, resnet50_os8    output stride 8: a 3×3 stride-1 stem conv and no max-pool (the CIFAR stem)
    resnet_test, resnet_test_os8  timm's `test_resnet` (0.37 M parameters, 96 features), output stride 32 (its
                                  own stem: three 3×3 convs, the first of stride 2, and max-pool) or 8 (the
                                  CIFAR stem, as above)
    vit_tiny, vit_small, vit_base timm ViTs with 16-pixel patches; vit_*_patch8 and vit_*_patch4 with 8- and
                                  4-pixel patches (timm's `patch_size`); any input size that is a multiple of
                                  the patch (position embeddings are interpolated)

Every backbone gives a dense feature map (`forward_features`, [B, C, h, w]; ViT: patch tokens, no class token)
and a pooled global feature (`forward`, [B, C]: the mean of the dense map, after the final norm for ViTs).
docs/backbones.md lists the grid each one gives at common sizes.

A MaskPretrainJob writes `<output>/export/backbone.pt` (the backbone's state dict) and
`<output>/export/metadata.json` (what the backbone is and how it was trained); `load_export` rebuilds it from
the name and image size written there. An export may carry more files under export/ (a VLP job's text tower:
runtime/dual_encoder.py), each with its sha256 in metadata.json's `files`, read back by `read_export_file`.
`random://<backbone>[?imageSize=N]` loads a randomly initialised
backbone as a baseline.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import torch
from torch import Tensor, nn

from freeatm.api.pretrain_job import BACKBONE_GEOMETRY, BACKBONES, is_vit

from .errors import InvalidInput
from .storage import MissingKey, join, open_store

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
WEIGHTS_FILE = f"{EXPORT_DIR}/backbone.pt"
METADATA_FILE = f"{EXPORT_DIR}/metadata.json"

_TIMM_NAMES = {
    "resnet_test": "test_resnet",
    "vit_test": "test_vit",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}
_FEATURE_DIMS = {
    "resnet18": 512,
    "resnet50": 2048,
    "resnet_test": 96,
    "vit_test": 64,
    "vit_tiny": 192,
    "vit_small": 384,
    "vit_base": 768,
}


class Backbone(nn.Module):
    """A feature extractor: dense map by `forward_features`, pooled vector by `forward`."""

    name: str
    feature_dim: int
    patch_size_or_stride: int
    image_size: int
    from_timm: bool

    def __init__(self, name: str, image_size: int, body: nn.Module) -> None:
        super().__init__()
        self.name, self.image_size = name, image_size
        arch, self.patch_size_or_stride = BACKBONE_GEOMETRY[name]
        self.feature_dim = _FEATURE_DIMS[arch]
        self.from_timm = arch in _TIMM_NAMES
        self.body = body

    @property
    def is_vit(self) -> bool:
        return is_vit(self.name)

    def forward_features(self, x: Tensor) -> Tensor:
        """Dense feature map [B, C, H/stride, W/stride]."""
        if self.is_vit:
            h, w = x.shape[-2] // self.patch_size_or_stride, x.shape[-1] // self.patch_size_or_stride
            tokens = self.body.forward_features(x)[:, self.body.num_prefix_tokens :]
            return tokens.transpose(1, 2).reshape(x.shape[0], self.feature_dim, h, w)
        if self.from_timm:  # a timm ResNet: stem, max-pool, layer1..layer4
            return self.body.forward_features(x)
        b = self.body  # torchvision's ResNet has no forward_features
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Global feature [B, C]: the mean of the dense map."""
        return self.forward_features(x).mean(dim=(2, 3))


def _resnet(arch: str, stride: int) -> nn.Module:
    if arch in _TIMM_NAMES:
        import timm

        body = timm.create_model(_TIMM_NAMES[arch], pretrained=False, num_classes=0)
    else:
        import torchvision

        body = getattr(torchvision.models, arch)(weights=None)
        body.fc = nn.Identity()
    if stride == 8:
        body.conv1 = nn.Conv2d(3, body.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(body.conv1.weight, mode="fan_out", nonlinearity="relu")
        body.maxpool = nn.Identity()
    return body


def _vit(arch: str, patch: int, image_size: int) -> nn.Module:
    import timm

    return timm.create_model(
        _TIMM_NAMES[arch],
        pretrained=False,
        num_classes=0,
        patch_size=patch,
        img_size=image_size,
        dynamic_img_size=True,
    )


def create_backbone(name: str, image_size: int = 224) -> Backbone:
    """Build backbone `name` for `image_size`-pixel inputs with random weights (nothing is downloaded)."""
    if name not in BACKBONE_GEOMETRY:
        raise InvalidInput(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    arch, stride = BACKBONE_GEOMETRY[name]
    if is_vit(name):
        if image_size % stride:
            raise InvalidInput(
                f"{name} uses {stride}-pixel patches: image size {image_size} must be a multiple of {stride}"
            )
        return Backbone(name, image_size, _vit(arch, stride, image_size))
    return Backbone(name, image_size, _resnet(arch, stride))


def state_dict_bytes(module: nn.Module, prefix: str | tuple[str, ...] = "") -> bytes:
    """`module`'s state dict (the entries whose names start with `prefix`, or one of them) as torch.save bytes, on the CPU."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if k.startswith(prefix)}
    torch.save(state, buf)
    return buf.getvalue()


def save_export(
    backbone: Backbone,
    metadata: dict[str, Any],
    output_uri: str,
    extra_files: dict[str, bytes] | None = None,
) -> str:
    """Write export/backbone.pt and export/metadata.json under `output_uri` (atomically); return the weights URI.

    The metadata is completed with backbone, imageSize, featureDim and the weights' sha256 (checked by
    load_export); `extra_files` (name → bytes) are written under export/ too, their sha256 in `files` (checked by
    read_export_file). Every file is written before metadata.json, so a metadata.json always describes complete
    files.
    """
    store = open_store(output_uri)
    weights = state_dict_bytes(backbone)
    extra_files = extra_files or {}
    meta = {
        **metadata,
        "backbone": backbone.name,
        "imageSize": backbone.image_size,
        "featureDim": backbone.feature_dim,
        "patchSizeOrStride": backbone.patch_size_or_stride,
        "weightsSha256": hashlib.sha256(weights).hexdigest(),
    }
    if extra_files:
        meta["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in extra_files.items()}
    store.write_bytes(WEIGHTS_FILE, weights)
    for name, data in extra_files.items():
        store.write_bytes(f"{EXPORT_DIR}/{name}", data)
    store.write_bytes(METADATA_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    return store.url(WEIGHTS_FILE)


def _random(uri: str) -> tuple[Backbone, dict[str, Any]]:
    parts = urlsplit(uri)
    name = parts.netloc or parts.path.strip("/")
    query = parse_qs(parts.query)
    try:
        size = int(query.get("imageSize", query.get("image_size", ["224"]))[0])
    except ValueError as e:
        raise InvalidInput(f"{uri}: imageSize must be an integer") from e
    backbone = create_backbone(name, size)
    meta = {
        "backbone": name,
        "imageSize": size,
        "featureDim": backbone.feature_dim,
        "patchSizeOrStride": backbone.patch_size_or_stride,
        "framework": "random",
        "useMasks": False,
        "fixes": {},
    }
    return backbone, meta


def _export_root(uri: str) -> str:
    """Accept the job's output dir, its export/ dir, or the backbone.pt URI itself."""
    root = uri.rstrip("/")
    for suffix in ("/" + WEIGHTS_FILE, "/" + METADATA_FILE, "/" + EXPORT_DIR):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


def load_export(uri: str) -> tuple[Backbone, dict[str, Any]]:
    """The backbone and metadata exported under `uri` (a MaskPretrainJob output), or a random one for
    random://<backbone>[?imageSize=N]. Raises InvalidInput naming the file that is missing or unusable."""
    if uri.startswith("random://"):
        return _random(uri)
    root = _export_root(uri)
    store = open_store(root)
    meta_url = join(root, METADATA_FILE)
    try:
        meta = json.loads(store.read_bytes(METADATA_FILE))
    except MissingKey as e:
        raise InvalidInput(
            f"{meta_url} does not exist: {root} is not a finished MaskPretrainJob output"
        ) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{meta_url} is not valid JSON: {e}") from e
    name, size = meta.get("backbone"), meta.get("imageSize", 224)
    if name not in BACKBONE_GEOMETRY or not isinstance(size, int):
        raise InvalidInput(
            f"{meta_url}: cannot build backbone {name!r} at imageSize {size!r}; known: {', '.join(BACKBONES)}"
        )
    stride = meta.get("patchSizeOrStride", BACKBONE_GEOMETRY[name][1])
    if stride != BACKBONE_GEOMETRY[name][1]:  # written before the names carried the geometry
        raise InvalidInput(
            f"{meta_url}: backbone {name} was trained with patch size or stride {stride}, but {name} now means "
            f"{BACKBONE_GEOMETRY[name][1]}: retrain it"
        )
    backbone = create_backbone(name, size)
    weights_url = join(root, WEIGHTS_FILE)
    try:
        weights = store.read_bytes(WEIGHTS_FILE)
    except MissingKey as e:
        raise InvalidInput(f"{weights_url} does not exist (metadata.json without weights)") from e
    digest = meta.get("weightsSha256")
    if digest is None:
        log.warning("%s: written before exports recorded their sha256; loading it unverified", meta_url)
    else:
        _verify(weights, digest, weights_url, meta_url)
    try:
        backbone.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    except (RuntimeError, EOFError, ValueError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidInput(f"{weights_url} does not fit backbone {name} at imageSize {size}: {msg}") from e
    except Exception as e:  # unpickling errors of a truncated/corrupt file have assorted types
        raise InvalidInput(f"{weights_url} is not a readable checkpoint: {type(e).__name__}: {e}") from e
    backbone.eval()
    return backbone, meta


def _verify(data: bytes, digest: str, url: str, meta_url: str) -> None:
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInput(f"{url} is corrupt: its sha256 is not the one {meta_url} records")


def read_export_file(uri: str, name: str, metadata: dict[str, Any]) -> bytes:
    """The bytes of export/`name` of the export at `uri` (whose metadata.json is `metadata`), checked against the
    sha256 that metadata records; InvalidInput when it is not recorded, missing or corrupt."""
    root = _export_root(uri)
    meta_url, url = join(root, METADATA_FILE), join(root, f"{EXPORT_DIR}/{name}")
    digest = (metadata.get("files") or {}).get(name)
    if not isinstance(digest, str):
        raise InvalidInput(f"{meta_url} records no file {name}")
    try:
        data = open_store(root).read_bytes(f"{EXPORT_DIR}/{name}")
    except MissingKey as e:
        raise InvalidInput(f"{url} does not exist (metadata.json records it)") from e
    _verify(data, digest, url, meta_url)
    return data
