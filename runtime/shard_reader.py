"""The one reader of a dataset's tar shards: each shard is checked against its manifest entry as it streams.

Every consumer (training, evaluation, generation deciding whether a shard is done) reads shards through
`verified_samples`. The bytes are hashed as tarfile reads them, the tail after the end-of-archive marker
included, so the sha256 and size are checked without a second pass; the sample count is checked too, because
tarfile ends a stream quietly at a bad header. A shard's samples are released only once it checks, so nothing
of a corrupt shard is ever trained on.
"""

from __future__ import annotations

import hashlib
from typing import IO, Any

from .errors import InvalidInput, TransientError

REPAIR = "rerun the dataset's generation: it regenerates the shards that do not match the manifest"


class _Digesting:
    """A read-only stream that hashes and counts the bytes read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


def verified_samples(
    stream: IO[bytes], entry: dict[str, Any], shard_uri: str, dataset_uri: str
) -> list[dict[str, Any]]:
    """The undecoded samples ({"__key__", "__url__", "png", "mask.png", "json", …}) of the shard `stream`,
    in order, once its bytes match `entry` (the manifest's sha256, bytes and samples); InvalidInput naming the
    shard and the dataset otherwise."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    where = f"shard {shard_uri} of dataset {dataset_uri}"
    expected = entry.get("sha256")
    if not isinstance(expected, str):
        raise InvalidInput(f"{where}: the manifest gives no sha256 for it")
    reader = _Digesting(stream)
    try:
        samples = list(group_by_keys(tar_file_expander([{"stream": reader, "url": shard_uri}])))
        while reader.read(1 << 20):
            pass  # the end-of-archive blocks and whatever tarfile left unread: all part of the digest
    except OSError as e:
        raise TransientError(f"reading {where} failed: {e}") from e
    except Exception as e:  # a corrupt tar; the digest below would say so too, less precisely
        reason = str(e.args[0]).split(" @ ")[0] if e.args else ""  # webdataset appends its stream and URL
        raise InvalidInput(
            f"{where} is corrupt: not a readable tar ({type(e).__name__}: {reason}); {REPAIR}"
        ) from e
    got = reader.sha256.hexdigest()
    if got != expected or reader.size != entry.get("bytes", reader.size):
        raise InvalidInput(
            f"{where} is corrupt: sha256 {got} ({reader.size} bytes) where the manifest lists {expected} "
            f"({entry.get('bytes')} bytes); {REPAIR}"
        )
    if len(samples) != entry.get("samples", len(samples)):
        raise InvalidInput(
            f"{where} holds {len(samples)} samples where the manifest lists {entry['samples']}; {REPAIR}"
        )
    return samples
