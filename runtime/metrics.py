"""Prometheus metrics of the runtime pods (names are the contract of the Grafana dashboard and alerts)."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

IMAGES_GENERATED = Counter("freeatm_runtime_images_generated", "Images generated (with their masks)")
SECONDS_PER_IMAGE = Histogram(
    "freeatm_runtime_seconds_per_image",
    "Wall-clock seconds per generated image, attention capture included",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
MASK_COVERAGE = Histogram(
    "freeatm_runtime_mask_coverage",
    "Share of image pixels covered by object masks",
    buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)
TRAIN_LOSS = Gauge("freeatm_runtime_train_loss", "Recent training loss")
TRAIN_STEP = Gauge("freeatm_runtime_train_step", "Optimiser steps done")
TRAIN_EPOCH = Gauge("freeatm_runtime_train_epoch", "Current epoch")
TRAIN_THROUGHPUT = Gauge(
    "freeatm_runtime_train_images_per_second", "Training images per second (this process)"
)
TRAIN_OBJECT_CROPS = Counter("freeatm_runtime_train_object_crops", "Mask-aware crops made")
TRAIN_OBJECT_CROP_MISSES = Counter(
    "freeatm_runtime_train_object_crop_misses",
    "Mask-aware crops that could not keep their object's share (they keep the baseline's position)",
)
TRAIN_MASKED_OBJECT_SHARE = Gauge(
    "freeatm_runtime_train_masked_object_share", "Guided MAE masking: share of object area masked, last epoch"
)
EVAL_BENCHMARKS_DONE = Counter("freeatm_runtime_eval_benchmarks", "Benchmarks finished")
EVAL_SCORE = Gauge("freeatm_runtime_eval_score", "Evaluation score", ["checkpoint", "benchmark", "metric"])
EVAL_SECONDS = Histogram(
    "freeatm_runtime_eval_benchmark_seconds",
    "Wall-clock seconds of one benchmark on one checkpoint",
    ["protocol"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
PROGRESS_RATIO = Gauge("freeatm_runtime_progress_ratio", "Share of the workload done (0–1)")


def serve_from_env() -> int | None:
    """Serve /metrics on FREEATM_METRICS_PORT when it is set (every pod sets it); return the port."""
    port = os.environ.get("FREEATM_METRICS_PORT")
    if not port:
        return None
    start_http_server(int(port))
    return int(port)
