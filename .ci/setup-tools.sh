#!/usr/bin/env bash
# Tools the tests use beside the Python packages: promtool (Debian's prometheus package), a Python ≥ 3.12
# venv with helm-sdkpy (the Helm library) and, where Go is installed, the real control plane and the helm
# binary (.ci/build-control-plane.sh). Idempotent; apt runs only as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .ci/helm-setup.sh ]; then
  bash .ci/helm-setup.sh
fi
if command -v go >/dev/null 2>&1; then
  bash .ci/build-control-plane.sh
else
  echo "setup-tools: no Go toolchain: the real control-plane tests will be skipped (kmock tier only)"
fi
