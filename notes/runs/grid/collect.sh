#!/bin/bash
# Copies the records of the grid's runs (notes/runs/grid.sh) into
# notes/runs/grid/<run>/: results.jsonl, starts.jsonl, model_config.json,
# the diagnostics, the diagnose.py and pose_stats.py tables, the accuracy
# on the training set (tests.py --test_set=train) as train_set_results.jsonl,
# the evaluations routed with another number of iterations (tests.py
# --iterations=N) as iterationsN_results.jsonl, and the logged progress
# lines.
set -u
cd "$(dirname "$0")/../../.."
for dir in runs/grid_*/; do
  name=$(basename "$dir"); name=${name#grid_}
  out=notes/runs/grid/$name
  mkdir -p "$out"
  cp "$dir/eval_test/results.jsonl" "$dir/starts.jsonl" \
     "$dir/model_config.json" "$out/" 2>/dev/null
  [ -d "$dir/diagnostics" ] && cp -r "$dir/diagnostics" "$out/"
  [ -f "runs/grid_$name.diagnose.txt" ] && cp "runs/grid_$name.diagnose.txt" "$out/diagnose.txt"
  [ -f "runs/grid_$name.pose_stats.txt" ] && cp "runs/grid_$name.pose_stats.txt" "$out/pose_stats.txt"
  [ -f "$dir/eval_train/results.jsonl" ] && cp "$dir/eval_train/results.jsonl" "$out/train_set_results.jsonl"
  for probe in "$dir"/eval_test_iterations*/results.jsonl; do
    [ -f "$probe" ] || continue
    iterations=$(basename "$(dirname "$probe")"); iterations=${iterations#eval_test_}
    cp "$probe" "$out/${iterations}_results.jsonl"
  done
  grep -h "train.py:[0-9]*\] step" "runs/grid_$name.train.log" \
      > "$out/train_progress.txt" 2>/dev/null
done
