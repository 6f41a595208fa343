"""Loading the text-to-image pipeline from a model URI, every source through the same ``from_pretrained`` path.

A model URI resolves to a local directory in the diffusers ``save_pretrained`` layout (``model_index.json``
plus one folder per component):

* ``hf://org/name`` — the Hub snapshot (``huggingface_hub.snapshot_download``), from the cache in
  ``FREEATM_HF_CACHE``/``HF_HUB_CACHE``/``HF_HOME``; with ``HF_HUB_OFFLINE=1`` only the cache is read and a
  missing model fails at once;
* ``s3://bucket/prefix`` — copied once into the local cache (``FREEATM_CACHE_DIR``) with boto3;
* ``pvc://claim/path`` — the mounted claim; ``file:///path`` — the directory itself;
* ``toy://shapes`` — the committed weights of the project's toy model; ``toy://shapes-random`` — the same
  architecture with random weights (built once into the cache), the baseline of ShapesBench.

The pipeline class is read from ``model_index.json`` (``_class_name``): a diffusers pipeline or one of the
project's own (:data:`PROJECT_PIPELINES`), of a family attention capture supports (:mod:`.families`; any other
class is InvalidInput before anything loads). Its ``from_pretrained(directory)`` loads the components.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from freeatm.runtime.errors import InvalidInput, TransientError
from freeatm.runtime.storage import cache_root, local_path, sync_to_cache

from .families import family_of

log = logging.getLogger("freeatm.generate")

PROJECT_PIPELINES = {"PixelTextToImagePipeline": "freeatm.runtime.toy.pipeline:PixelTextToImagePipeline"}
"""Pipeline classes of this project, by the ``_class_name`` their model_index.json records."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HASH_LIMIT = 64 << 20  # files above this size enter the model digest by name and size only


@dataclass
class LoadedModel:
    pipe: Any
    uri: str
    directory: Path
    class_name: str
    digest: str
    family: str

    def identity(self) -> dict[str, str]:
        """The manifest's ``model`` block."""
        return {"uri": self.uri, "class": self.class_name, "digest": self.digest}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_dir(uri: str, revision: str | None = None) -> Path:
    """The local directory holding the pipeline named by `uri` (downloaded or synced when needed)."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme == "toy":
        return _toy_dir(parts.netloc + parts.path)
    if scheme == "hf":
        return _hub_dir(f"{parts.netloc}{parts.path}".strip("/"), revision)
    if scheme in ("file", "pvc"):
        path = local_path(uri)
        assert path is not None
        if not path.is_dir():
            raise InvalidInput(f"model {uri}: directory {path} does not exist")
        return path
    if scheme == "s3":
        return sync_to_cache(uri, cache_root() / "models")
    raise InvalidInput(
        f"model {uri!r}: unknown scheme {scheme or '(none)'!r}; use hf://, s3://, pvc://, file:// or toy://"
    )


def _toy_dir(name: str) -> Path:
    from freeatm.runtime.toy.pipeline import TRAINED, build_random_pipeline, toy_model_dir

    if name in TRAINED:
        path = toy_model_dir(name)
        if not (path / "model_index.json").exists():
            raise InvalidInput(
                f"toy://{name}: the trained weights are not installed at {path}; use toy://shapes-random for the "
                "random-weights model"
            )
        return path
    if name == "shapes-random":
        path = cache_root() / "toy" / "shapes-random"
        if not (path / "model_index.json").exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            build_random_pipeline(seed=0).save_pretrained(tmp)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, path)
            except OSError:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
        return path
    raise InvalidInput(
        f"toy://{name}: unknown toy model; use {', '.join(f'toy://{n}' for n in (*TRAINED, 'shapes-random'))}"
    )


def _hub_dir(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    cache_dir = os.environ.get("FREEATM_HF_CACHE") or None
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model", "*merges*", "*vocab*"],
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if offline:
            raise InvalidInput(
                f"model hf://{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; pre-populate the "
                "cache volume (HF_HOME / HF_HUB_CACHE) or unset HF_HUB_OFFLINE"
            ) from e
        raise TransientError(f"model hf://{repo_id}: cannot reach the Hugging Face Hub: {e}") from e
    except GatedRepoError as e:
        raise InvalidInput(
            f"model hf://{repo_id} is gated: put an HF_TOKEN with access in the model's secretRef"
        ) from e
    except RepositoryNotFoundError as e:
        raise InvalidInput(f"model hf://{repo_id} does not exist (or needs an HF_TOKEN)") from e
    except RevisionNotFoundError as e:
        raise InvalidInput(f"model hf://{repo_id}: revision {revision!r} does not exist") from e
    except HfHubHTTPError as e:
        raise TransientError(f"model hf://{repo_id}: Hub request failed: {e}") from e
    except (OSError, ValueError) as e:  # connection errors, timeouts
        raise TransientError(f"model hf://{repo_id}: download failed: {e}") from e
    return Path(path)


def pipeline_class(name: str) -> type:
    """The pipeline class called `name` in a model_index.json."""
    if name in PROJECT_PIPELINES:
        module, _, attr = PROJECT_PIPELINES[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        raise InvalidInput(f"model_index.json names pipeline class {name!r}, which is neither a diffusers pipeline nor "
                           f"one of {sorted(PROJECT_PIPELINES)}")  # fmt: skip
    return cls


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` where diffusers has it (it deprecated ``torch_dtype``), else ``torch_dtype=``."""
    try:
        from diffusers.utils import deprecation_utils

        return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}
    except ImportError:
        return {"torch_dtype": dtype}


def model_digest(directory: Path) -> str:
    """sha256 over the model's files (relative path and content; files over 64 MiB by path and size)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(directory).as_posix()
        size = path.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= _HASH_LIMIT:
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def load_pipeline(
    uri: str, revision: str | None = None, dtype: str = "float32", device: str | None = None
) -> LoadedModel:
    """Load the pipeline `uri` names onto `device` (default: cuda when available, else cpu) in `dtype`."""
    directory = resolve_model_dir(uri, revision)
    index_file = directory / "model_index.json"
    if not index_file.exists():
        raise InvalidInput(
            f"model {uri}: {directory} has no model_index.json (not a diffusers pipeline directory)"
        )
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise InvalidInput(f"model {uri}: model_index.json is not JSON: {e}") from e
    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise InvalidInput(f"model {uri}: model_index.json has no _class_name")
    cls = pipeline_class(class_name)
    family = family_of(class_name)  # before the weights load: an unsupported class fails at once
    for component, value in index.items():
        if component.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (directory / component).is_dir():
            raise InvalidInput(f"model {uri}: component {component!r} is missing ({directory / component})")

    device = device or os.environ.get("FREEATM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = DTYPES[dtype]
    if torch_dtype == torch.float16 and device == "cpu":
        log.warning("float16 is not supported on the CPU; generating in float32")
        torch_dtype = torch.float32
    try:
        pipe = cls.from_pretrained(directory, **_dtype_kwarg(torch_dtype))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise InvalidInput(f"model {uri}: cannot load the pipeline from {directory}: {e}") from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "safety_checker", None) is not None:
        log.info("model %s has a safety checker; flagged images are blacked out by the pipeline", uri)
    return LoadedModel(pipe, uri, directory, class_name, model_digest(directory), family)
