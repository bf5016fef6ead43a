#!/usr/bin/env bash
# Installs the system packages memberd's tests and demo need, if missing.
# Used by `make test`, `make demo` and .ci/run; safe to run repeatedly.
# Needs root (or sudo) only when something is actually missing.
set -euo pipefail

# Debian packages and a file each one provides, to tell whether it is there.
pkgs=(
  "softhsm2:/usr/bin/softhsm2-util"
  "opensc:/usr/bin/pkcs11-tool"
  "openssl:/usr/bin/openssl"
  "gcc:/usr/bin/gcc"
  "iproute2:/usr/sbin/ip"
  "nftables:/usr/sbin/nft"
  "tinyproxy:/usr/bin/tinyproxy"
)
missing=()
for p in "${pkgs[@]}"; do
  name=${p%%:*}; file=${p#*:}
  [ -e "$file" ] || missing+=("$name")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing missing Debian packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "deps: need root to install ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1
    fi
  fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null; then
  echo "deps: Go is not installed. Install Go >= 1.26 (https://go.dev/doc/install) and put it on PATH." >&2
  exit 1
fi
gov=$(go env GOVERSION | sed 's/^go//')
major=${gov%%.*}; rest=${gov#*.}; minor=${rest%%.*}
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 21 ]; }; then
  echo "deps: Go $gov is too old to fetch the toolchain itself; install Go >= 1.26." >&2
  exit 1
fi
