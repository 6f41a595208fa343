"""Resumable training checkpoints under `<output>/checkpoints/`, and the final export.

A checkpoint holds the training model (backbone + heads), the optimiser, the learning-rate schedule, epoch,
step, the RNG states of every rank and the spec digest. Rank 0 writes it through runtime/storage.py, which
makes the write atomic (temporary file + rename locally; an S3 object appears only once uploaded), so a crash
mid-write leaves the previous checkpoint intact. On start, `load_latest` tries the checkpoints newest first and
skips (with a warning) any that cannot be read — e.g. truncated by a full disk or a copy gone wrong. Each
checkpoint's sha256 is written beside it (`step-N.pt.sha256`) and checked on resume, so one with flipped bytes
that torch would load is skipped too, as is one whose digest was never written. The `KEEP` newest
checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput, RuntimeFailure
from ..storage import MissingKey, cached_store

log = logging.getLogger("freeatm.pretrain.checkpoint")

PREFIX = "checkpoints/"
KEEP = 2
_NAME = re.compile(r"^checkpoints/step-(\d{9})\.pt$")


def key_for(step: int) -> str:
    return f"{PREFIX}step-{step:09d}.pt"


def digest_key(step: int) -> str:
    return key_for(step) + ".sha256"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(output_uri: str, step: int, state: dict[str, Any]) -> str:
    """Write the checkpoint of `step` (rank 0 only) and prune older ones; return its URI."""
    store = cached_store(output_uri)
    buf = io.BytesIO()
    torch.save({**state, "step": step}, buf)
    key, data = key_for(step), buf.getvalue()
    # The digest first: a checkpoint that is visible always has its digest (a crash between the two writes
    # leaves only an orphan digest, which the next save of that step overwrites).
    store.write_bytes(digest_key(step), hashlib.sha256(data).hexdigest().encode())
    store.write_bytes(key, data)
    for old in steps(output_uri)[KEEP:]:
        store.delete(key_for(old))
        store.delete(digest_key(old))
    return store.url(key)


def steps(output_uri: str) -> list[int]:
    """Steps of the checkpoints under `output_uri`, newest first."""
    found = []
    for key in cached_store(output_uri).list(PREFIX):
        if m := _NAME.match(key):
            found.append(int(m.group(1)))
    return sorted(found, reverse=True)


def load_latest(output_uri: str, spec_digest: str) -> dict[str, Any] | None:
    """The newest readable checkpoint under `output_uri`, or None. Unreadable ones are skipped with a warning;
    one written for another spec is an error (its output location belongs to a different job), and storage
    trouble a TransientError: a checkpoint that could not be fetched is not a corrupt one."""
    store = cached_store(output_uri)
    for step in steps(output_uri):
        url = store.url(key_for(step))
        try:
            data = store.read_bytes(key_for(step))
            if store.read_bytes(digest_key(step)).decode() != hashlib.sha256(data).hexdigest():
                raise ValueError("its sha256 is not the one written with it")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "model" not in state or state.get("step") != step:
                raise ValueError("not a freeatm training checkpoint")
        except MissingKey:
            log.warning("skipping unreadable checkpoint %s: it or its sha256 is missing", url)
            continue
        except RuntimeFailure:  # another spec's checkpoint, or storage trouble: not a corrupt checkpoint
            raise
        except Exception as e:  # truncated or corrupt: fall back to an older one
            log.warning("skipping unreadable checkpoint %s: %s: %s", url, type(e).__name__, str(e)[:200])
            continue
        if state.get("specDigest") != spec_digest:
            raise InvalidInput(
                f"{url} was written by a different spec ({state.get('specDigest')} ≠ {spec_digest}): point "
                "spec.output.uri at a new location, or delete the old checkpoints to start over"
            )
        log.info("resuming from %s (epoch %s, step %s)", url, state.get("epoch"), step)
        return state
    return None
