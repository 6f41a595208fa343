#!/usr/bin/env bash
# Runs on the lent GPU machine (no network), in the device tool's copy of this checkout, after wheels.sh ran here:
#   device run, carry [".whl"], command: bash benchmarks/device/gpu_pilot.sh [more study options]
# Installs the carried wheels and this checkout into /tmp/site beside the image's own torch, timm and transformers,
# then runs the GPU form's pilot (docs/study.md, "The GPU form") under a wall-clock limit, with its log and JSON
# under $OUT. Options given to the script follow the pilot's own and override them (argparse keeps the last).
set -uo pipefail
out=${OUT:-/tmp/freeatm-pilot}
mkdir -p "$out"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . \
    || { echo "installing the carried wheels or the checkout failed" >&2; exit 3; }
python3 - <<'PY' || exit 3
import diffusers, timm, torch
import freeatm.runtime.shapesbench.study  # noqa: F401 (the import chain the pilot needs)
print(f"torch {torch.__version__}, timm {timm.__version__}, diffusers {diffusers.__version__};",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY
# The workdir outlives a run stopped at the limit while the machine stays warm: run again at once and the study
# reuses every checkpoint and evaluation that finished.
timeout "${PILOT_SECONDS:-360}" python3 -m freeatm.runtime.shapesbench.study --protocol gpu --seeds 1 --images 4096 \
    --epochs 40 --val-images 1024 --arms true-masks,silhouette-simclr-w64 --workdir /tmp/freeatm-pilot-work \
    --json "$out/pilot.json" "$@" 2>&1 | tee "$out/pilot.log"
