#!/usr/bin/env bash
# Tools the tests use beside the Python packages: promtool (Debian's prometheus package) and a Python ≥ 3.12
# venv with helm-sdkpy (the Helm library). Idempotent; apt runs only as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .ci/helm-setup.sh ]; then
  bash .ci/helm-setup.sh
fi
