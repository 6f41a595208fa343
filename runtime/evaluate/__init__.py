"""`freeatm-runtime evaluate`: score pretrained checkpoints on downstream benchmarks (EvalJob, issue #6).

Protocols (classification.py, segmentation.py, detection.py, retrieval.py) run on datasets read by datasets.py;
job.py orders the work, resumes it and writes the report (report.py).
"""

from __future__ import annotations

from typing import Any


def run(resource: Any) -> dict[str, Any]:
    """Run the EvalJob `resource` and return its status.outputs (wire form: uri, reportUri, results)."""
    from .job import run as run_job

    return run_job(resource)


__all__ = ["run"]
