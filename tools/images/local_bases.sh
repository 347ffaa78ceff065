#!/usr/bin/env bash
# Local stand-ins for the Dockerfiles' registry bases, for machines that cannot pull them (the CI machines):
#   localhost/tunewright-base/python:3.11-bookworm  for python:3.11-slim-bookworm (operator/Dockerfile PYTHON_IMAGE)
#   localhost/tunewright-base/torch:<TORCH_VERSION> for pytorch/pytorch:<torch>-cuda... (trainer-image BASE_IMAGE)
# The first is a debootstrap of Debian bookworm (its python3 is 3.11) from the mirror apt already uses, with a
# virtual environment at /opt/python first on PATH: the Dockerfiles call `python -m pip`, and a venv is
# outside Debian's EXTERNALLY-MANAGED marker, as python:3.11-slim's /usr/local python is. The second adds
# PyPI's torch at the version trainer-image/Dockerfile pins. Each image is built only when buildah's storage
# lacks it; the last two lines printed are the two image names. Needs root, buildah and debootstrap
# (`make image-tools`); `--isolation chroot` runs the steps without a container runtime.
set -euo pipefail
cd "$(dirname "$0")/../.."

TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' trainer-image/Dockerfile)
PYTHON_BASE=localhost/tunewright-base/python:3.11-bookworm
TORCH_BASE=localhost/tunewright-base/torch:${TORCH_VERSION}
WORK=build/images
ctr=
trap '[ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT  # a failed step leaves no container

exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

if ! exists "$PYTHON_BASE"; then
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 'Target-Of: deb' | sort -u | head -1)
  [ -n "$mirror" ] || { echo "local_bases.sh: apt has no bookworm source to debootstrap from" >&2; exit 1; }
  rm -rf "$WORK/rootfs" && mkdir -p "$WORK"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$mirror"
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
  rm -rf "$WORK/rootfs"
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$WORK/rootfs.tar" / >/dev/null
  rm -f "$WORK/rootfs.tar"
  # The host's CA bundle, so that pip in the builds trusts what this machine trusts (e.g. an egress proxy's CA).
  buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah config --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd python "$ctr"
  buildah run --isolation chroot "$ctr" -- /usr/bin/python3 -m venv /opt/python
  buildah commit --rm "$ctr" "$PYTHON_BASE" && ctr=
fi

if ! exists "$TORCH_BASE"; then
  ctr=$(buildah from "$PYTHON_BASE")
  buildah run --isolation chroot "$ctr" -- python -m pip install --no-cache-dir -q "torch==${TORCH_VERSION}"
  buildah commit --rm "$ctr" "$TORCH_BASE" && ctr=
fi

echo "$PYTHON_BASE"
echo "$TORCH_BASE"
