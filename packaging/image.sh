#!/usr/bin/env bash
# Builds bin/dist/memberd-image_<version>_<arch>.tar, a container image that
# `docker load` / `podman load` read, without a Docker daemon or a registry
# (packaging/oci, go-containerregistry). Usage: packaging/image.sh BIN VERSION
# (called by `make image`). Needs the Go module proxy the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:?memberd binary}
version=${2:?version (git describe)}
arch=$(go env GOARCH)
out=bin/dist/memberd-image_${version}_${arch}.tar
tag=memberd:$(tr -c 'A-Za-z0-9_.\n-' '_' <<<"$version")

# The shared libraries the binary links (glibc and its loader: memberd uses
# cgo for PKCS#11), at the paths the binary asks for.
libs=()
while read -r l; do libs+=(-lib "$l"); done < <(ldd "$bin" | grep -o '/[^ ]*' | sort -u)
[[ ${#libs[@]} -gt 0 ]] || { echo "image.sh: ldd found no libraries for $bin" >&2; exit 1; }

epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
(cd packaging/oci && GOFLAGS=-mod=mod go build -o ../../bin/tools/oci .)
bin/tools/oci -binary "$bin" -etc packaging/etc -out "$out" -tag "$tag" -version "$version" \
	-revision "$(git rev-parse HEAD 2>/dev/null || echo unknown)" -epoch "$epoch" -arch "$arch" "${libs[@]}"
echo "$out $tag"
