#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need. Idempotent; uses sudo when not root.
#   --arm64-all  also the arm64 packages of the whole cross build (scripts/test-arm64.sh --all);
#                without it, those of the arm64 kernel tests only (scripts/test-arm64.sh, in CI).
set -euo pipefail
# The Python oracles in scripts/ (torch, transformers) are not needed to build or test.
pkgs=(build-essential cmake ninja-build
      libopenblas-openmp-dev nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev
      pkg-config libpcre2-dev libutf8proc-dev libcpp-httplib-dev curl python3-venv
      clang libomp-dev libclang-rt-dev llvm  # the sanitizer and fuzz build; llvm-objdump checks its objects
      # The arm64 cross build (cmake/aarch64-linux-gnu.cmake) run under qemu: Debian's cross
      # toolchain and the multiarch arm64 libraries of the kernel tests.
      g++-aarch64-linux-gnu qemu-user libfmt-dev:arm64 libopenblas-openmp-dev:arm64 libgtest-dev:arm64)
case "${1:-}" in
  "") ;;
  --arm64-all) pkgs+=(libpcre2-dev:arm64 libutf8proc-dev:arm64 libcpp-httplib-dev:arm64) ;;
  *) echo "usage: $0 [--arm64-all]" >&2; exit 2 ;;
esac
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# The arm64 packages install beside the host's (multiarch); apt-get update below then lists them.
dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
