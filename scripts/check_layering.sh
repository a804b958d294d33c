#!/usr/bin/env bash
# Fails when a module includes a header of a module it may not use
# (ARCHITECTURE.md's table, closed over its dependencies). Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A allowed=(
  [core]="core"
  [tensor]="core tensor"
  [autograd]="core tensor autograd"
  [nn]="core tensor autograd nn"
  [optim]="core tensor autograd optim"
  [io]="core tensor io"
  [data]="core tensor io data"
  [comm]="core comm"
  [ps]="core tensor autograd optim comm ps"
  [strategy]="core tensor autograd nn optim comm ps strategy"
  [train]="core tensor autograd nn optim io data comm ps strategy train"
  [cli]="core tensor autograd nn optim io data comm ps strategy train cli"
)

status=0
for module in "${!allowed[@]}"; do
  [[ -d src/$module ]] || continue
  while IFS= read -r line; do
    file=${line%%:*}
    used=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<<"$line")
    if [[ " ${allowed[$module]} " != *" $used "* ]]; then
      echo "layering: $file includes $used/, which $module may not use (${allowed[$module]})" >&2
      status=1
    fi
  done < <(grep -rHE --include='*.h' --include='*.cpp' --include='*.cc' '^#include "[a-z_]+/' src/"$module" || true)
done
[[ $status -eq 0 ]] && echo "layering: every include follows the module table"
exit $status
