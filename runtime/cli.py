"""`freeatm-runtime`: what the workload pods run (the runtime contract, DESIGN §5).

    freeatm-runtime generate|pretrain|evaluate --spec FILE

FILE (or the FREEATM_SPEC environment variable) holds the *resolved* resource as JSON or YAML: the manifest of
the SyntheticDataset, MaskPretrainJob or EvalJob with every `ref` already replaced by the dependency's output
URI. The command's outputs (the resource's `status.outputs`) are printed as the last stdout line and written to
FREEATM_RESULT_FILE, or to the pod's termination message (/dev/termination-log) where it exists, which the
operator reads. Exit codes: 0 done, 65 invalid input (permanent), 75 transient trouble (retry), 1 other.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from freeatm.api import KINDS, Resource, error_lines, parse_resource
from freeatm.api.resources import UnknownKind

from .errors import EXIT_INVALID, RuntimeFailure
from .metrics import serve_from_env

COMMANDS = {info.runtime_command: kind for kind, info in KINDS.items()}
TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LIMIT = 4000
log = logging.getLogger("freeatm.runtime")


def load_resource(command: str, spec_file: str | None) -> Resource:
    """Read and validate the resolved resource for `command`; raises InvalidInput-style SystemExit on error."""
    text = Path(spec_file).read_text() if spec_file else os.environ.get("FREEATM_SPEC", "")
    if not text:
        raise SystemExit(_fail("no spec: pass --spec FILE or set FREEATM_SPEC"))
    try:
        doc = yaml.safe_load(text)
        resource = parse_resource(doc)
    except (yaml.YAMLError, UnknownKind) as e:
        raise SystemExit(_fail(f"spec: {e}")) from e
    except ValidationError as e:
        raise SystemExit(_fail("invalid spec: " + "; ".join(f"{p}: {m}" for p, m in error_lines(e)))) from e
    if resource.kind != COMMANDS[command]:  # type: ignore[attr-defined]
        raise SystemExit(_fail(f"{command} runs a {COMMANDS[command]}, got a {resource.kind}"))  # type: ignore[attr-defined]
    return resource


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    _write_result({"error": message})
    return EXIT_INVALID


def _write_result(result: dict[str, Any]) -> None:
    text = json.dumps(result)
    target = os.environ.get("FREEATM_RESULT_FILE")
    if target:
        Path(target).write_text(text)
    elif TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        if (
            len(text) > TERMINATION_LIMIT
        ):  # the kubelet keeps 4096 bytes: the full table stays in results.json
            text = json.dumps({k: v for k, v in result.items() if k != "results"})[:TERMINATION_LIMIT]
        TERMINATION_LOG.write_text(text)


def run(command: str, resource: Resource) -> dict[str, Any]:
    """Run `command` in this process and return the resource's outputs."""
    module = importlib.import_module(f"freeatm.runtime.{command}")
    return module.run(resource)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freeatm-runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--spec", help="resolved resource (JSON or YAML); default: $FREEATM_SPEC")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FREEATM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    resource = load_resource(args.command, args.spec)
    serve_from_env()
    try:
        outputs = run(args.command, resource)
    except RuntimeFailure as e:
        print(f"error: {e}", file=sys.stderr)
        _write_result({"error": str(e), "exitCode": e.exit_code})
        return e.exit_code
    _write_result(outputs)
    print(json.dumps(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
