#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests start (tests/control_plane.py), from pinned Go modules:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes, KUBE_VERSION)
#   etcd                                                              (go.etcd.io/etcd/server/v3's etcdmain)
#   helm                                                              (helm.sh/helm/v3, HELM_VERSION)
# k8s.io/kubernetes points its k8s.io/* staging modules at ./staging with `replace` lines, which only apply
# inside that module, so it cannot be `go install`ed: a small wrapper module requires it and pins each staging
# module to the matching v0.x release instead. Outputs live outside the repo in $FREEATM_TOOLS_DIR (default
# ~/.cache/freeatm) and are reused: a second run only checks the versions. Writes the binaries' directory to
# $FREEATM_TOOLS_ENV as FREEATM_KUBE_BIN. Usage: bash .ci/build-control-plane.sh
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE="${FREEATM_TOOLS_DIR:-$HOME/.cache/freeatm}"
ENV_FILE="${FREEATM_TOOLS_ENV:-$CACHE/tools.env}"
BIN="$CACHE/kube-$KUBE_VERSION-helm-$HELM_VERSION/bin"
SRC="$CACHE/kube-$KUBE_VERSION-wrapper"
STAMP="$BIN/.built"

if ! command -v go >/dev/null 2>&1; then
  echo "build-control-plane: no Go toolchain on PATH; the real control-plane tier needs Go >= 1.25" >&2
  exit 1
fi

staging_minor="0.${KUBE_VERSION#v1.}"      # v1.35.4 -> 0.35.4
staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KUBE_VERSION $HELM_VERSION" ]; then
  echo "build-control-plane: reusing $BIN"
else
  mkdir -p "$SRC" "$BIN"
  cd "$SRC"
  {
    echo "module freeatm.local/controlplane"
    echo
    echo "go 1.25.0"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    for m in $staging; do echo "replace k8s.io/$m => k8s.io/$m v$staging_minor"; done
  } > go.mod
  # etcd's server module ships etcdmain as a library; the root module's main.go is two lines around it.
  mkdir -p etcd
  cat > etcd/main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  echo "build-control-plane: resolving k8s.io/kubernetes $KUBE_VERSION (staging modules v$staging_minor)"
  GOFLAGS=-mod=mod go mod tidy
  ver="k8s.io/component-base/version"
  cver="k8s.io/client-go/pkg/version"
  minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for p in "$ver" "$cver"; do
    ldflags="$ldflags -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags="$ldflags -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "build-control-plane: building kube-apiserver kube-controller-manager kube-scheduler kubectl etcd"
  go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" ./etcd
  # helm.sh/helm/v3 carries no replace lines, so its own go.mod decides its dependencies.
  echo "build-control-plane: building helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$KUBE_VERSION $HELM_VERSION" > "$STAMP"
fi

"$BIN/kube-apiserver" --version
"$BIN/etcd" --version | sed -n 1p  # reads all: head would make pipefail see SIGPIPE
"$BIN/kubectl" version --client | sed -n 1p  # reads all: head would make pipefail see SIGPIPE
"$BIN/helm" version --short

mkdir -p "$(dirname "$ENV_FILE")"
touch "$ENV_FILE"
grep -v '^FREEATM_KUBE_BIN=' "$ENV_FILE" > "$ENV_FILE.tmp" || true
echo "FREEATM_KUBE_BIN=$BIN" >> "$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
echo "build-control-plane: wrote FREEATM_KUBE_BIN to $ENV_FILE"
