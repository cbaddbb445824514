#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need. Idempotent; uses sudo when not root.
set -euo pipefail
# The Python oracles in scripts/ (torch, transformers) are not needed to build or test.
pkgs=(build-essential cmake ninja-build
      libopenblas-openmp-dev nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev
      pkg-config libpcre2-dev libutf8proc-dev libcpp-httplib-dev curl python3-venv
      clang libomp-dev libclang-rt-dev)  # the sanitizer and fuzz build
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
