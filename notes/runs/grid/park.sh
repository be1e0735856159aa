#!/bin/bash
# Parks an unfinished run of notes/runs/grid.sh in the repository, so that a
# later sitting on a new checkout resumes it: copies the last checkpoint of
# runs/grid_<run> (with its `checkpoint` index), model_config.json,
# starts.jsonl and the evaluations so far to notes/runs/grid/<run>/resume/,
# through a temporary directory that is checked to load before it replaces
# the previous copy. grid.sh restores runs/grid_<run> from there when the
# run directory does not exist. Stop the training first with SIGTERM (`kill
# PID` of its train.py): it saves the step it is at, and grid.sh, seeing
# train.py fail, skips the run's evaluation.
#
# Usage: bash notes/runs/grid/park.sh RUN ...
set -eu
cd "$(dirname "$0")/../../.."
for name in "$@"; do
  dir=runs/grid_$name
  latest=$(sed -n 's/^model_checkpoint_path: "\(.*\)"$/\1/p' \
           "$dir/checkpoint" 2>/dev/null || true)
  if [ -z "$latest" ] || [ ! -f "$dir/$latest.index" ]; then
    echo "park.sh: $dir has no checkpoint to park" >&2; exit 1
  fi
  out=notes/runs/grid/$name/resume
  rm -rf "$out.tmp" "$out.old"
  mkdir -p "$out.tmp/eval_test"
  cp "$dir/$latest".* "$dir/model_config.json" "$dir/starts.jsonl" "$out.tmp/"
  if [ -f "$dir/eval_test/results.jsonl" ]; then
    cp "$dir/eval_test/results.jsonl" "$out.tmp/eval_test/"
  fi
  printf 'model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n' \
      "$latest" "$latest" > "$out.tmp/checkpoint"
  python -c "
import sys, tensorflow as tf
path = tf.train.latest_checkpoint(sys.argv[1])
assert path and tf.train.load_checkpoint(path).get_variable_to_shape_map()
" "$out.tmp" 2>/dev/null || {
    echo "park.sh: the copy of $dir/$latest does not load" >&2
    rm -rf "$out.tmp"; exit 1; }
  [ -d "$out" ] && mv "$out" "$out.old"
  mv "$out.tmp" "$out"
  rm -rf "$out.old"
  echo "parked $dir/$latest in $out"
done
