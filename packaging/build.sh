#!/usr/bin/env bash
# Builds bin/dist/memberd_<version>_<arch>.deb and .rpm with nfpm.
# Usage: packaging/build.sh NFPM BIN VERSION   (called by `make package`)
set -euo pipefail
cd "$(dirname "$0")/.."

nfpm=${1:?nfpm binary}
bin=${2:?memberd binary}
version=${3:?version (git describe)}

# git describe -> a version dpkg and rpm order correctly:
#   v1.2.3             -> 1.2.3
#   v1.2.3-4-gabcdef   -> 1.2.3+4.gabcdef
#   abcdef (no tag)    -> 0.0.0+git<commits>.abcdef
#   ...-dirty          -> ...+dirty / .dirty
dirty=
case "$version" in *-dirty) dirty=1; version=${version%-dirty} ;; esac
if [[ $version =~ ^v?([0-9]+(\.[0-9]+)*)(-([0-9]+)-g([0-9a-f]+))?$ ]]; then
	pkg=${BASH_REMATCH[1]}
	[[ -n ${BASH_REMATCH[4]} ]] && pkg+="+${BASH_REMATCH[4]}.g${BASH_REMATCH[5]}"
elif [[ $version =~ ^[0-9a-f]{4,40}$ ]]; then
	pkg="0.0.0+git$(git rev-list --count HEAD 2>/dev/null || echo 0).$version"
else
	pkg="0.0.0+$(tr -c 'A-Za-z0-9.\n' '.' <<<"$version")"
fi
if [[ -n $dirty ]]; then
	if [[ $pkg == *+* ]]; then pkg+=".dirty"; else pkg+="+dirty"; fi
fi

# nfpm does not expand the environment in contents: stage the binary at the
# fixed path nfpm.yaml names.
mkdir -p bin/dist bin/pkgroot
install -m 0755 "$bin" bin/pkgroot/memberd
export PKG_VERSION=$pkg ARCH=${ARCH:-$(go env GOARCH)}
for p in deb rpm; do
	"$nfpm" package --config packaging/nfpm.yaml --packager "$p" --target bin/dist/ >&2
done
ls -1 bin/dist/memberd[_-]"$pkg"*
