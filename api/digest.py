"""The digest of a JSON value: sha256 over its canonical JSON (sorted keys, no whitespace).

Each user digests its own selection of a spec: a dataset's generation settings (its manifest's specDigest), a
training's settings (its checkpoints' specDigest), a local-mode stage, the spec a Job was rendered from (the
operator's annotations), an evaluation run (checkpoint, benchmark and protocol version: its result file). Those values are stored, so the canonical form never changes (tests/test_digests.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def spec_digest(value: Any) -> str:
    """``sha256:<hex>`` of `value` in canonical JSON: equal digests mean equal values."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
