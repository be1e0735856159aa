#!/bin/bash
# The multi-device path's overhead on this CPU (issue 10): the default
# network (1 iteration, batch 24) trained for 300 steps on 1 device and on
# 2 logical CPU devices (--cpu_replicas=2) that share the same cores, in
# one script, one after the other, on an otherwise idle machine. Prints the
# mean images/s logged over steps 100-300 (train.py logs every 50 steps).
set -eu
cd "$(dirname "$0")/../../.."
lscpu | grep -E '^(Model name|CPU\(s\)):'
for replicas in 1 2 1 2; do
  dir=$(mktemp -d)
  python src/train.py --train_dir="$dir/run" --max_steps=300 --seed=1 \
      --cpu_replicas="$replicas" --save_checkpoint_steps=1000 \
      --save_summaries_steps=1000 2> "$dir/log" || { tail "$dir/log"; exit 1; }
  rate=$(grep -o 'step [0-9]*  .*  \([0-9.]*\) images/s' "$dir/log" \
         | awk '$2 >= 150 {sub(/.*  /, ""); sub(/ images\/s/, ""); s += $0; n++}
                END {printf "%.1f", s / n}')
  echo "cpu_replicas=$replicas: $rate images/s (mean over steps 150-300)"
  rm -rf "$dir"
done
