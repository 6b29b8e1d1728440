#!/bin/bash
# benchmarks/backup.py on an earlier commit and on HEAD, one after the other on this machine (each in a worktree
# of its own under build/, so neither touches benchmarks/results/), both results copied to
# benchmarks/results/backup_ab/. Usage: benchmarks/backup_vs_commit.sh COMMIT [backup.py flags...]
set -euo pipefail
old=${1:?usage: $0 COMMIT [backup.py flags]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/benchmarks/results/backup_ab
mkdir -p "$out" "$root/build"
for rev in "$old" HEAD; do
  tree=$root/build/ab-$(git -C "$root" rev-parse --short "$rev")
  git -C "$root" worktree add -f --detach "$tree" "$rev" > /dev/null
  (cd "$tree" && PYTHONPATH=$tree "$root/.venv/bin/python" benchmarks/backup.py "$@")
  name=$([ "$rev" = HEAD ] && echo after || echo "before-$(git -C "$root" rev-parse --short "$rev")")
  cp "$tree/benchmarks/results/backup.json" "$out/$name.json"
  git -C "$root" worktree remove --force "$tree"
done
