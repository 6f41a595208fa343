"""The runtime's error classes, each with its exit code of the runtime contract (the codes and their meaning
are api/vocabulary.py's; docs/architecture.md#exit-codes)."""

from __future__ import annotations

import errno
import json
import re
import tarfile
import zlib

from freeatm.api.vocabulary import EXIT_BUG, EXIT_INVALID, EXIT_TRANSIENT

# An OSError with one of these means a path that is wrong, not storage that is unwell: retrying cannot help.
_PERMANENT_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ELOOP,
    errno.ENAMETOOLONG,
}
# Decoders' errors: the bytes they were given are not what they should be.
_BAD_DATA = (tarfile.TarError, zlib.error, UnicodeDecodeError, json.JSONDecodeError)
# torch's DataLoader raises a loader process's exception again as the same type, with that process's whole
# traceback for a message (ExceptionWrapper.reraise in torch/_utils.py).
_LOADER_PROCESS = re.compile(r"Caught \w+ (in DataLoader worker process \d+)\.\nOriginal Traceback")
# ...which for an OSError loses its errno: str(OSError(errno, strerror, filename)) is how it is read back.
_CARRIED_OS_ERROR = re.compile(r"\[Errno (\d+)\] (.*?)(?:: '(.*)')? \((in DataLoader worker process \d+)\)$")


class RuntimeFailure(Exception):
    """Base of the errors the runtime reports with a documented exit code."""

    exit_code = EXIT_BUG


class InvalidInput(RuntimeFailure):
    """The spec, the model, the dataset or another input is wrong: fix it, retrying will not help."""

    exit_code = EXIT_INVALID


class TransientError(RuntimeFailure):
    """Storage or network trouble that may pass: the pod is retried."""

    exit_code = EXIT_TRANSIENT


def os_failure(error: OSError, what: str) -> RuntimeFailure:
    """InvalidInput for a path that is wrong (missing, a directory, not permitted), else TransientError."""
    reason = error.strerror or str(error)
    if error.errno is None or error.errno in _PERMANENT_ERRNOS:
        return InvalidInput(f"{what}: {reason}")
    return TransientError(
        f"{what}: {reason} ({errno.errorcode.get(error.errno, error.errno)}); retrying may help"
    )


def _message(error: BaseException) -> str:
    """str(error); for an exception that torch's DataLoader carried out of a loader process, its original
    message and that process instead of the process's traceback."""
    text = str(error)
    loader = _LOADER_PROCESS.match(text)
    if loader is None:
        return text
    lines = text.rstrip().splitlines()
    last = max(i for i, line in enumerate(lines) if line.endswith("Traceback (most recent call last):"))
    start = next((i for i in range(last + 1, len(lines)) if not lines[i].startswith(" ")), len(lines) - 1)
    name, _, original = "\n".join(lines[start:]).partition(": ")  # "module.Class: message"
    return f"{original if name.endswith(type(error).__qualname__) else text} ({loader[1]})"


def as_failure(error: BaseException) -> RuntimeFailure | None:
    """The documented failure `error` amounts to when it escapes a command; None when it is a bug."""
    if isinstance(error, RuntimeFailure):
        message = _message(error)
        return error if message == str(error) else type(error)(message)
    if isinstance(error, _BAD_DATA):
        return InvalidInput(f"bad input data: {type(error).__name__}: {_message(error)}")
    if isinstance(error, OSError) and error.errno is not None:
        return os_failure(error, str(error.filename or "I/O"))
    if isinstance(error, OSError) and (carried := _CARRIED_OS_ERROR.match(_message(error))):
        number, reason, filename, process = carried.groups()
        return os_failure(OSError(int(number), reason), f"{filename or 'I/O'} ({process})")
    return None
