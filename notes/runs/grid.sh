#!/bin/bash
# The routing research's runs (issue 9): every recipe at 1, 2 and 3 routing
# iterations and the candidates for the default, each 5,000 steps at batch
# 24 (120,000 training images), and the default trained longer; seed 1, SAME
# Conv1 (the MNIST default).
# default_i1_var1e-1, default_i3_var1e-1_positions and
# default_i3_var1e-1_positions_warmup were trained to 5,000 steps first and
# later extended to 10,000 (SCREEN_STEPS=5000 repeats the first part).
# default_augment_long and default_augment_decay095 keep all 31 checkpoints
# (goal (d)); they differ only in how fast the learning rate decays.
# default_augment_decay095_seed2 repeats default_augment_decay095 with
# another seed (a run's further flags come after --seed=1 and override it).
# default_i3_var1e-1_positions_warmup_augment_decay095 trains the best
# 3-iteration recipe the way of goal (d), to the same 40,000 steps (goal a).
# identity_i3_var1e-1_positions_warmup is that recipe with the identity
# initialisation, the best at 1 iteration (identity_i1).
# identity_i3_var1e-2_positions_warmup lowers the floor for the identity
# initialisation's larger poses (at 0.1 it binds for 94% of the class
# capsules' variances). identity_i1_seed2 and
# identity_i3_var1e-2_positions_warmup_seed2 repeat the two arms of goal (a)
# with a second seed, and the _seed3 runs with a third.
# The default_* runs trained the initialisation that was the default until
# 2026-11-29, `normal` since (--config=normal); identity_long is
# default_long with today's default, the identity initialisation (§6);
# default_i1_seed2 and _seed3 repeat default_lambda2_i1 (the `normal`
# initialisation at 1 iteration) with two more seeds, to set three seeds of
# each initialisation side by side.
# Each run trains alone on both cores, then tests.py evaluates every kept
# checkpoint on all 10,000 test images and diagnose.py summarises the
# routing on the first 1,000. A finished run is skipped and an interrupted
# one resumes from its last checkpoint, so the script can be restarted in a
# later sitting. A new checkout has no runs/: `bash notes/runs/grid/park.sh
# RUN` keeps an unfinished run's last checkpoint in notes/runs/grid/RUN/resume/,
# from which this script restores runs/grid_RUN (and its logged progress).
#
# Usage: bash notes/runs/grid.sh [RUN ...]   (default: every run, in order)
#        SCREEN_STEPS=1000 bash notes/runs/grid.sh RUN ...   trains (or
#        resumes) RUN only to step 1000 and evaluates it there: a screen
#        that the full run later continues from.
set -u
cd "$(dirname "$0")/../.."
# run name, --config, --iterations, --max_steps, further flags. The default
# has lambda = 2 since default_lambda2_i1 (before, 1: the other candidate).
RUNS="
authors_i3 authors 3 5000
default_lambda2_i1 normal 1 5000 --final_lambda=2
default_margin065_i1 normal 1 5000 --final_lambda=1 --margin_end=0.65
default_long normal 1 15000
ibm_i3 ibm 3 5000
identity_i3 identity 3 5000
authors_i1 authors 1 5000
ibm_i1 ibm 1 5000
identity_i1 identity 1 5000
default_i3 normal 3 5000
authors_i2 authors 2 5000
ibm_i2 ibm 2 5000
identity_i2 identity 2 5000
default_i2 normal 2 5000
default_i3_stopgrad normal 3 5000 --stop_assignment_gradients
default_i3_var1e-2 normal 3 5000 --min_variance=1e-2
default_i3_var1e-1 normal 3 5000 --min_variance=1e-1
default_i1_class3 normal 1 5000 --class_iterations=3
default_i3_class1 normal 3 5000 --class_iterations=1
default_i3_var1 normal 3 5000 --min_variance=1
default_i1_var1e-1 normal 1 10000 --min_variance=1e-1
default_i3_var1e-1_recon normal 3 5000 --min_variance=1e-1 --reconstruction_weight=0.0005
default_i3_var1e-1_types normal 3 5000 --min_variance=1e-1 --e_step_normalization=parent_types --initial_assignments=per_slot
default_i3_var1e-1_positions normal 3 10000 --min_variance=1e-1 --e_step_normalization=parent_positions
default_i1_var1e-1_perslot normal 1 5000 --min_variance=1e-1 --initial_assignments=per_slot
default_i3_types normal 3 5000 --e_step_normalization=parent_types --initial_assignments=per_slot
default_i3_positions normal 3 5000 --e_step_normalization=parent_positions
default_i3_var1e-1_warmup normal 3 5000 --min_variance=1e-1 --routing_warmup_steps=2000
default_i3_warmup normal 3 5000 --routing_warmup_steps=2000
default_i3_var1e-1_types_warmup normal 3 5000 --min_variance=1e-1 --e_step_normalization=parent_types --initial_assignments=per_slot --routing_warmup_steps=2000
default_i3_var1e-1_positions_warmup normal 3 10000 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000
default_i3_var1e-1_positions_warmup_recon normal 3 5000 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --reconstruction_weight=0.0005
default_i3_var1e-1_positions_warmup_recon_std normal 3 5000 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --reconstruction_weight=0.0005 --decoder_standardization
default_i3_var1e-1_positions_warmup_recon2e-3 normal 3 5000 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --reconstruction_weight=0.002
default_i3_var1e-2_positions_warmup_recon normal 3 5000 --min_variance=1e-2 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --reconstruction_weight=0.0005
default_i3_var1e-1_positions_warmup_augment normal 3 10000 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --augment
default_i1_var1e-1_augment normal 1 10000 --min_variance=1e-1 --augment
default_augment_long normal 1 30000 --keep_checkpoint_max=31 --augment --learning_rate_decay_rate=0.9 --learning_rate_decay_steps=1000
default_augment_decay095 normal 1 30000 --keep_checkpoint_max=31 --augment --learning_rate_decay_rate=0.95 --learning_rate_decay_steps=1000
default_augment_decay095_seed2 normal 1 30000 --keep_checkpoint_max=31 --augment --learning_rate_decay_rate=0.95 --learning_rate_decay_steps=1000 --seed=2
identity_i3_var1e-1_positions_warmup identity 3 5000 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000
identity_i3_var1e-2_positions_warmup identity 3 5000 --min_variance=1e-2 --e_step_normalization=parent_positions --routing_warmup_steps=2000
identity_i1_seed2 identity 1 5000 --seed=2
identity_i3_var1e-2_positions_warmup_seed2 identity 3 5000 --min_variance=1e-2 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --seed=2
identity_i3_var1e-2_positions_warmup_seed3 identity 3 5000 --min_variance=1e-2 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --seed=3
identity_i1_seed3 identity 1 5000 --seed=3
identity_long default 1 15000
default_i1_seed2 normal 1 5000 --seed=2
default_i1_seed3 normal 1 5000 --seed=3
default_i3_var1e-1_positions_warmup_augment_decay095 normal 3 40000 --keep_checkpoint_max=41 --min_variance=1e-1 --e_step_normalization=parent_positions --routing_warmup_steps=2000 --augment --learning_rate_decay_rate=0.95 --learning_rate_decay_steps=1000
"
selected=" ${*:-$(echo "$RUNS" | awk 'NF {print $1}' | tr '\n' ' ')} "
echo "$RUNS" | while read -r name recipe iterations steps extra; do
  [[ -n "$name" && "$selected" == *" $name "* ]] || continue
  steps=${SCREEN_STEPS:-$steps}
  dir=runs/grid_$name
  if grep -qs "\"step\": $steps," "$dir/eval_test/results.jsonl"; then
    echo "$(date -u +%FT%TZ) $dir done; skipping"; continue
  fi
  parked=notes/runs/grid/$name/resume
  if [ ! -e "$dir/checkpoint" ] && [ -e "$parked/checkpoint" ]; then
    echo "$(date -u +%FT%TZ) restoring $dir from $parked"
    mkdir -p "$dir" && cp -r "$parked/." "$dir/"
    [ -e "$dir.train.log" ] || cp "notes/runs/grid/$name/train_progress.txt" \
        "$dir.train.log" 2>/dev/null
  fi
  echo "$(date -u +%FT%TZ) training $dir"
  # shellcheck disable=SC2086
  python src/train.py --config="$recipe" --iterations="$iterations" --seed=1 \
      $extra --train_dir="$dir" --max_steps="$steps" >> "$dir.train.log" 2>&1 \
      < /dev/null || { echo "$(date -u +%FT%TZ) $dir: train.py failed"; continue; }
  echo "$(date -u +%FT%TZ) evaluating $dir"
  python src/tests.py --train_dir="$dir" --gpu=0 --timeout_secs=1 \
      >> "$dir.eval.log" 2>&1 < /dev/null
  python src/diagnose.py --train_dir="$dir" --gpu=0 --num_images=1000 \
      > "$dir.diagnose.txt" 2>> "$dir.eval.log" < /dev/null
done
echo "$(date -u +%FT%TZ) grid finished"
