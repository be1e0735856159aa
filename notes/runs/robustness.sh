#!/bin/bash
# The robustness comparison's runs (issue 12, notes/robustness.md): the
# capsule network (the default of 2026-11-28, 1 routing iteration: since
# 2026-11-29 --initialization=normal, as below) and the CNN
# baseline, each trained 5,000 steps at batch 24 on mnist40 (MNIST digits
# placed at random on a 40x40 canvas, no other transformation), seed 1,
# then every kept checkpoint evaluated on the centred 40x40 MNIST test set
# and on the affNIST-style set (all 10,000 images each).
#
# Usage: bash notes/runs/robustness.sh train
#        bash notes/runs/robustness.sh attack CAPSULES_DIR@STEP CNN_DIR@STEP
# The second form attacks the two checkpoints chosen at matched clean
# accuracy with FGSM and BIM, untargeted and targeted, on the first 500
# test images, into notes/runs/robustness/attacks.
# A finished training run is skipped and an interrupted one resumes.
set -eu
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-5000}

train_and_evaluate() {
  local dir=$1; shift
  python src/train.py --dataset=mnist40 --train_dir="$dir" --seed=1 \
      --max_steps=$STEPS --gpu=0 "$@" >> "$dir.train.log" 2>&1 < /dev/null
  for test_set in test affnist; do
    python src/tests.py --train_dir="$dir" --gpu=0 --timeout_secs=0 \
        --test_set=$test_set >> "$dir.eval.log" 2>&1 < /dev/null
  done
}

case "${1:-}" in
  train)
    train_and_evaluate runs/robust_cnn --model=cnn_baseline
    train_and_evaluate runs/robust_capsules --model=capsules \
        --initialization=normal
    ;;
  attack)
    [[ $# -eq 3 ]] || { echo "usage: $0 attack CAPS@STEP CNN@STEP" >&2; exit 2; }
    python src/attack.py --train_dir="$2" --train_dir="$3" --gpu=0 \
        --num_images=500 --output_dir=notes/runs/robustness/attacks \
        2>&1 | tee -a runs/robust_attack.log
    ;;
  *) echo "usage: $0 train | attack CAPS@STEP CNN@STEP" >&2; exit 2 ;;
esac
