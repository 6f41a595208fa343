#!/usr/bin/env bash
# Tools for the chart and monitoring checks (tests/test_helm_*.py, tests/test_prometheus_*.py):
#   - a Python >= 3.12 virtual environment with helm-sdkpy (the Helm v4 library: lint, install into kmock)
#   - promtool from Debian's `prometheus` package (the service is not started)
# Writes their locations to $FREEATM_TOOLS_ENV (default ~/.cache/freeatm/tools.env), which the tests read.
# Idempotent: a second run reuses what is there. Usage: bash .ci/helm-setup.sh
set -euo pipefail

HELM_SDKPY_VERSION="${HELM_SDKPY_VERSION:-0.1.32}"
CACHE="${FREEATM_TOOLS_DIR:-$HOME/.cache/freeatm}"
VENV="$CACHE/helm-venv"
ENV_FILE="${FREEATM_TOOLS_ENV:-$CACHE/tools.env}"
mkdir -p "$CACHE"

find_python312() {
  local c
  for c in "${FREEATM_PYTHON312:-}" python3.13 python3.12 \
           /root/.pyenv/versions/3.12.1/bin/python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  return 1
}

# 1. helm-sdkpy in a Python >= 3.12 venv
if ! "$VENV/bin/python" -I -c "import helm_sdkpy, sys; sys.exit(helm_sdkpy.__version__ != '$HELM_SDKPY_VERSION')" 2>/dev/null; then
  PY312="$(find_python312)" || { echo "helm-setup: no Python >= 3.12 found (set FREEATM_PYTHON312)" >&2; exit 1; }
  echo "helm-setup: creating $VENV with $PY312"
  rm -rf "$VENV"
  (cd "$CACHE" && "$PY312" -I -m venv "$VENV")
  (cd "$CACHE" && "$VENV/bin/python" -I -m pip install --quiet --disable-pip-version-check "helm-sdkpy==$HELM_SDKPY_VERSION")
fi
"$VENV/bin/python" -I -c 'import helm_sdkpy; print("helm-setup: helm-sdkpy", helm_sdkpy.__version__, "Helm", helm_sdkpy.get_version())'

# 2. promtool (Debian's prometheus package; the service is never started)
PROMTOOL="$(command -v promtool || true)"
if [ -z "$PROMTOOL" ]; then
  echo "helm-setup: installing Debian's prometheus package for promtool"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the package's post-install from starting the service where an init system exists.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && REMOVE_POLICY=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ "${REMOVE_POLICY:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  PROMTOOL="$(command -v promtool)"
fi
"$PROMTOOL" --version 2>&1 | head -1

# Keep the other scripts' lines (.ci/build-control-plane.sh writes FREEATM_KUBE_BIN).
touch "$ENV_FILE"
grep -v -e '^FREEATM_HELM_PYTHON=' -e '^FREEATM_PROMTOOL=' "$ENV_FILE" > "$ENV_FILE.tmp" || true
printf 'FREEATM_HELM_PYTHON=%s\nFREEATM_PROMTOOL=%s\n' "$VENV/bin/python" "$PROMTOOL" >> "$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "helm-setup: wrote $ENV_FILE"
