#!/usr/bin/env bash
# Builds the control plane the tests run on into .bin/: kube-apiserver, kube-controller-manager and kubectl of
# the Kubernetes release pinned in go.mod, and etcd of the pinned etcd release. `make control-plane` runs it
# when go.mod or go.sum change; the Go build cache makes a rebuild of unchanged packages cheap.
set -euo pipefail
cd "$(dirname "$0")"
bin=$(cd ../.. && pwd)/.bin
mkdir -p "$bin"
version() { go list -m -f '{{.Version}}' "$1"; }
kube=$(version k8s.io/kubernetes)
# What Kubernetes' own build stamps in (hack/lib/version.sh): the API server derives its compatibility
# version from gitVersion, and `kubectl version` shows it.
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  minor=${kube#v1.}
  stamp+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
done
for cmd in kube-apiserver kube-controller-manager kubectl; do
  go build -trimpath -ldflags "-s -w$stamp" -o "$bin/$cmd.part" "k8s.io/kubernetes/cmd/$cmd"
  mv "$bin/$cmd.part" "$bin/$cmd"
done
go build -trimpath -ldflags "-s -w" -o "$bin/etcd.part" go.etcd.io/etcd/server/v3
mv "$bin/etcd.part" "$bin/etcd"
"$bin/kubectl" version --client
"$bin/etcd" --version
