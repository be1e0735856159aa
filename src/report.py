"""Test accuracy against step and wall-clock time for a run, as markdown.

  python src/report.py --train_dir=runs/mnist_default --target=0.99

Reads <train_dir>/starts.jsonl (written by train.py) and
<train_dir>/eval_test/results.jsonl (written by tests.py). Wall-clock times
are measured from the first start of train.py: "trained" is when the
checkpoint was written, "known" when tests.py finished evaluating it.
Prints the curve and the first checkpoint that reaches --target.
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string('train_dir', 'runs/default', 'Directory of the run.')
flags.DEFINE_string('eval_dir', None, 'Default <train_dir>/eval_test.')
flags.DEFINE_float('target', 0.99, 'Accuracy whose first arrival to report.')


def read_jsonl(path):
  """The records of a JSON-lines file; a clear error if it is missing."""
  if not os.path.exists(path):
    raise app.UsageError(f'{path} not found')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _minutes(seconds):
  return f'{max(seconds, 0.0) / 60:.1f}'


def curve_table(records, start):
  """Markdown rows: step, minutes trained, minutes known, accuracy, images."""
  rows = ['| step | trained (min) | known (min) | test accuracy | error | '
          'test images |', '|---:|---:|---:|---:|---:|---:|']
  for r in sorted(records, key=lambda r: r['step']):
    trained = (_minutes(r['checkpoint_time'] - start)
               if r.get('checkpoint_time') else '')
    rows.append(f"| {r['step']} | {trained} | {_minutes(r['time'] - start)} "
                f"| {r['accuracy']:.4f} | {100 * (1 - r['accuracy']):.2f}% | "
                f"{r['images_evaluated']} |")
  return '\n'.join(rows)


def first_reaching(records, target):
  """The record of the lowest step whose accuracy is >= target, or None."""
  hits = [r for r in records if r['accuracy'] >= target]
  return min(hits, key=lambda r: r['step']) if hits else None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  eval_dir = FLAGS.eval_dir or os.path.join(FLAGS.train_dir, 'eval_test')
  starts = read_jsonl(os.path.join(FLAGS.train_dir, 'starts.jsonl'))
  records = read_jsonl(os.path.join(eval_dir, 'results.jsonl'))
  start = starts[0]['time']
  print(curve_table(records, start))
  best = max(records, key=lambda r: r['accuracy'])
  print(f"\nbest: {best['accuracy']:.4f} at step {best['step']} "
        f"({best['images_evaluated']} test images)")
  if len(starts) > 1:
    print(f'train.py was (re)started {len(starts)} times; times include '
          'any pause between runs.')
  hit = first_reaching(records, FLAGS.target)
  if hit is None:
    print(f'{FLAGS.target:.4f} not reached.')
    return
  trained = hit.get('checkpoint_time') or hit['time']
  print(f"first >= {FLAGS.target:.4f}: step {hit['step']}, accuracy "
        f"{hit['accuracy']:.4f}, checkpoint written {_minutes(trained - start)}"
        f" min after the start, result known {_minutes(hit['time'] - start)}"
        ' min after the start.')


if __name__ == '__main__':
  app.run(main)
