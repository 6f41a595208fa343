"""The runtime's error classes and the exit codes of the runtime contract (DESIGN §5).

The operator turns these codes into the Job's podFailurePolicy: EXIT_INVALID fails the Job at once (retrying
bad input cannot help), EXIT_TRANSIENT and any other non-zero code count against backoffLimit.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID = 65  # sysexits EX_DATAERR: the spec or its input is wrong; permanent
EXIT_TRANSIENT = 75  # sysexits EX_TEMPFAIL: storage or network trouble; retry


class RuntimeFailure(Exception):
    """Base of the errors the runtime reports with a documented exit code."""

    exit_code = 1


class InvalidInput(RuntimeFailure):
    """The spec, the model, the dataset or another input is wrong: fix it, retrying will not help."""

    exit_code = EXIT_INVALID


class TransientError(RuntimeFailure):
    """Storage or network trouble that may pass: the pod is retried."""

    exit_code = EXIT_TRANSIENT
