"""`freeatm run` as a user starts it, for the local-mode tests: one child process, output merged and captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def freeatm_run(pipeline: Path, workdir: Path, *options: str, **popen: Any) -> subprocess.Popen[str]:
    """Start `freeatm run -f pipeline --workdir workdir [options]`; `popen` goes to subprocess.Popen."""
    command = [
        sys.executable,
        "-m",
        "freeatm.cli.main",
        "run",
        "-f",
        str(pipeline),
        "--workdir",
        str(workdir),
    ]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen
    )
