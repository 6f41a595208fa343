"""`promtool check metrics` on the operator's and the runtime's /metrics output (generated and served)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helm_tools import promtool
from tests.prometheus_tools import exported_names, exposition, registries, touch_all


def check_metrics(text: bytes) -> None:
    proc = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module", autouse=True)
def samples() -> Iterator[None]:
    """Samples of every metric (label value "x", never a real kind); the scrape-time source is restored after."""
    from freeatm.operator import metrics

    source = metrics.RESOURCES.source
    touch_all()
    yield
    metrics.RESOURCES.source = source


@pytest.mark.parametrize("component", ["operator", "runtime"])
def test_promtool_check_metrics_on_generated_output(component):
    text = exposition(component)
    assert text.count(b"# TYPE") >= 5
    check_metrics(text)


def test_every_freeatm_metric_appears_in_the_output():
    for component, names in exported_names().items():
        text = exposition(component).decode()
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        # Every counter/histogram/gauge family name is a prefix of one of the exported sample names.
        assert families and all(any(n.startswith(f) for n in names) for f in families), component


def test_operator_http_metrics_endpoint_passes_promtool():
    from freeatm.operator import metrics

    port = free_port()
    metrics.serve(port)
    text = scrape(port)
    assert b"freeatm_operator_resources{" in text
    check_metrics(text)


def test_runtime_http_metrics_endpoint_passes_promtool(monkeypatch):
    from freeatm.runtime.metrics import serve_from_env

    port = free_port()
    monkeypatch.setenv("FREEATM_METRICS_PORT", str(port))
    assert serve_from_env() == port
    text = scrape(port)
    assert b"freeatm_runtime_progress_ratio" in text
    check_metrics(text)  # the runtime serves the default registry: process and Python metrics included


def test_operator_metric_labels_are_low_cardinality():
    """Labels like kind, result and phase — never a resource name or namespace
    (docs/architecture.md#observability)."""
    registry, prefix = registries()["operator"]
    labels = {
        key
        for family in registry.collect()
        if family.name.startswith(prefix)
        for sample in family.samples
        for key in sample.labels
    }
    assert labels <= {"kind", "result", "phase", "le"}, labels
