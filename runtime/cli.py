"""`freeatm-runtime`: what the workload pods run (docs/architecture.md#the-runtime-contract).

    freeatm-runtime generate|pretrain|evaluate --spec FILE

FILE (or the FREEATM_SPEC environment variable) holds the *resolved* resource as JSON or YAML: the manifest of
the SyntheticDataset, MaskPretrainJob or EvalJob with every `ref` already replaced by the dependency's output
URI. The command's outputs (the resource's `status.outputs`) are printed as the last stdout line and written to
FREEATM_RESULT_FILE, or to the pod's termination message (/dev/termination-log) where it exists, which the
operator reads. Exit codes (api/vocabulary.py): 0 done, 65 invalid input (permanent: a spec that cannot be
read or parsed, bad data), 75 transient trouble (retry), 130 interrupted, 1 a bug (its traceback is in the
log). Every failure ends with one line, `error: …`, on stderr and in the result as {"error", "exitCode"}.
With FREEATM_PARENT_PIPE set (local mode), stdin is a pipe the parent holds open: when it closes, the parent
is gone (even killed with SIGKILL) and the command stops as on SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from freeatm.api import KINDS, Resource, error_lines, parse_resource
from freeatm.api.resources import UnknownKind
from freeatm.api.vocabulary import EXIT_BUG, EXIT_INTERRUPTED
from freeatm.api.yaml_input import InputError, parse, read_documents

from .errors import InvalidInput, as_failure, os_failure
from .metrics import serve_from_env

COMMANDS = {info.runtime_command: kind for kind, info in KINDS.items()}
TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LIMIT = 4000
PARENT_PIPE_ENV = "FREEATM_PARENT_PIPE"
log = logging.getLogger("freeatm.runtime")


def load_resource(command: str, spec_file: str | None) -> Resource:
    """Read and validate the resolved resource for `command`; InvalidInput (or TransientError) when it cannot.

    The spec is read as user YAML is (freeatm/api/yaml_input.py): no aliases, no duplicate keys, bounded."""
    where = f"spec {spec_file}" if spec_file else "$FREEATM_SPEC"
    try:
        docs = read_documents(Path(spec_file)) if spec_file else parse(os.environ.get("FREEATM_SPEC", ""))
    except OSError as e:
        raise os_failure(e, where) from e
    except InputError as e:
        raise InvalidInput(f"{where}: {e}" + (f" ({e.where})" if e.where != "-" else "")) from e
    if len(docs) != 1 or not isinstance(docs[0], dict):
        got = f"{len(docs)} documents" if len(docs) != 1 else f"a {type(docs[0]).__name__}"
        raise InvalidInput(
            f"{where}: expected one resource (a mapping with apiVersion, kind, metadata and spec), got {got}"
        )
    try:
        resource = parse_resource(docs[0])
    except ValidationError as e:
        raise InvalidInput(f"{where} is invalid: " + "; ".join(f"{p}: {m}" for p, m in error_lines(e))) from e
    except UnknownKind as e:
        raise InvalidInput(f"{where}: {e}") from e
    except Exception as e:  # hostile structure the parser did not foresee: still the spec's fault
        raise InvalidInput(f"{where} cannot be parsed: {type(e).__name__}: {e}") from e
    kind, expected = resource.kind, COMMANDS[command]  # type: ignore[attr-defined]
    if kind != expected:
        raise InvalidInput(f"{command} runs a {expected}, got a {kind}")
    return resource


def _fail(code: int, message: str) -> int:
    message = " ".join(message.split())  # one line, whatever the exception's text held
    print(f"error: {message}", file=sys.stderr)
    try:
        _write_result({"error": message, "exitCode": code})
    except OSError as e:
        log.warning("could not write the result: %s", e)
    return code


def _write_result(result: dict[str, Any]) -> None:
    text = json.dumps(result)
    target = os.environ.get("FREEATM_RESULT_FILE")
    if target:
        Path(target).write_text(text)
    elif TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        # the kubelet keeps 4096 bytes: the full table stays in results.json
        if len(text) > TERMINATION_LIMIT:
            text = json.dumps({k: v for k, v in result.items() if k != "results"})[:TERMINATION_LIMIT]
        TERMINATION_LOG.write_text(text)


def run(command: str, resource: Resource) -> dict[str, Any]:
    """Run `command` in this process and return the resource's outputs."""
    module = importlib.import_module(f"freeatm.runtime.{command}")
    return module.run(resource)


def _stop_with_parent() -> None:
    """Stop as on SIGTERM once stdin reaches end of file: the parent holding its other end is gone."""

    def watch() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except OSError:
            return  # no readable stdin: nothing to watch
        log.warning("the parent process is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freeatm-runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--spec", help="resolved resource (JSON or YAML); default: $FREEATM_SPEC")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FREEATM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.environ.get(PARENT_PIPE_ENV):
        _stop_with_parent()
    try:
        resource = load_resource(args.command, args.spec)
        serve_from_env()
        outputs = run(args.command, resource)
        _write_result(outputs)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as e:
        failure = as_failure(e)
        if failure is None:
            log.exception("a bug in freeatm-runtime %s", args.command)
            return _fail(EXIT_BUG, f"internal error (a bug, traceback above): {type(e).__name__}: {e}")
        return _fail(failure.exit_code, str(failure))
    print(json.dumps(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
