#!/usr/bin/env bash
# Run here, before a GPU run (it needs PyPI): puts into .whl/ the wheels of carried.txt for the lent GPU machine's
# Python (3.12, no network), at the versions of this checkout's tested environment (.venv, `make install`). The run
# names .whl in `carry`; gpu_pilot.sh installs them and the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/pip ] || { echo "no .venv: run \`make install\` first" >&2; exit 2; }
grep -qx '/.whl/' .gitignore || { echo ".whl/ must be ignored (.gitignore)" >&2; exit 2; }
rm -rf .whl && mkdir .whl
pins=()
while read -r name; do
    version=$(.venv/bin/pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "$name is not installed in .venv" >&2; exit 2; }
    pins+=("$name==$version")
done < <(grep -v '^#' benchmarks/device/carried.txt)
platforms=()
for n in 17 24 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 "${platforms[@]}" --dest .whl "${pins[@]}"
du -sh .whl
