#!/bin/bash
# The routing research's grid (issue 9 section 4): every recipe at 1, 2 and 3
# routing iterations, 5,000 steps at batch 24 (120,000 training images), seed
# 1, SAME Conv1 (the MNIST default). Each run trains alone on both cores,
# then tests.py evaluates every kept checkpoint on all 10,000 test images and
# diagnose.py summarises the routing on the first 1,000. A finished run is
# skipped and an interrupted one resumes, so the script can be restarted in
# a later sitting. Usage: bash notes/runs/grid.sh [RECIPE:ITERATIONS ...]
set -u
cd "$(dirname "$0")/../.."
RUNS=${*:-authors:3 ibm:3 identity:3 authors:1 ibm:1 identity:1 default:3 authors:2 ibm:2 identity:2 default:2}
for spec in $RUNS; do
  recipe=${spec%:*}; iterations=${spec#*:}
  dir=runs/grid_${recipe}_i${iterations}
  if grep -qs '"step": 5000' "$dir/eval_test/results.jsonl"; then
    echo "$(date -u +%FT%TZ) $dir done; skipping"; continue
  fi
  echo "$(date -u +%FT%TZ) training $dir"
  python src/train.py --config="$recipe" --iterations="$iterations" \
      --train_dir="$dir" --seed=1 --max_steps=5000 >> "$dir.train.log" 2>&1 \
      || { echo "$(date -u +%FT%TZ) $dir: train.py failed"; continue; }
  echo "$(date -u +%FT%TZ) evaluating $dir"
  python src/tests.py --train_dir="$dir" --gpu=0 --timeout_secs=1 \
      >> "$dir.eval.log" 2>&1
  python src/diagnose.py --train_dir="$dir" --gpu=0 --num_images=1000 \
      > "$dir.diagnose.txt" 2>> "$dir.eval.log"
done
echo "$(date -u +%FT%TZ) grid finished"
