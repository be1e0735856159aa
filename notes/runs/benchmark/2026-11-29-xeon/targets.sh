#!/bin/bash
# The fused vote kernels built for three targets on one CPU, before and after
# the chunked lanes: BEFORE and AFTER are checkouts of commit f9d397c with
# the first and with both commits of avx2-lanes.patch applied (`git am`): the
# first only adds $CAPSULES_EM_KERNEL_TARGET, the second the chunked lanes.
# Both run the same commands, one after the other, in this one script, with
# a fresh kernel cache. Prints one JSON line per measurement, each prefixed
# with the checkout and the target ("native": the variable unset).
#   bash targets.sh BEFORE AFTER > targets.jsonl
set -eu
before=$1; after=$2
cache=$(mktemp -d)
export CAPSULES_EM_KERNEL_CACHE=$cache
run() {  # label dir target command...
  local label=$1 dir=$2 target=$3; shift 3
  if [ "$target" = native ]; then unset CAPSULES_EM_KERNEL_TARGET
  else export CAPSULES_EM_KERNEL_TARGET=$target; fi
  (cd "$dir" && "$@" 2>/dev/null) | grep '^{' | sed "s|^{|{\"checkout\": \"$label\", \"target\": \"$target\", |"
}
for target in native -march=x86-64-v3 ""; do
  for side in before after; do
    dir=$before; [ $side = after ] && dir=$after
    run $side "$dir" "$target" python src/benchmark_kernels.py --threads=2
  done
done
for target in native -march=x86-64-v3; do
  for side in before after; do
    dir=$before; [ $side = after ] && dir=$after
    run $side "$dir" "$target" python src/benchmark.py --configs=1x24,3x24 --nonaive
  done
done
run after "$after" native python src/benchmark.py --configs=1x24,3x24 --nonaive --nofused_votes
rm -rf "$cache"
