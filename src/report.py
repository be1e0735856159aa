"""Test accuracy against step and wall-clock time for runs, as markdown and
as a plot.

  python src/report.py --train_dir=runs/mnist_default --target=0.99
  python src/report.py --train_dir=runs/a --train_dir=runs/b --plot=ab.png

Reads <train_dir>/starts.jsonl (written by train.py) and
<train_dir>/eval_test/results.jsonl (written by tests.py; or
<train_dir>/results.jsonl, the layout of the runs kept in notes/runs).
Wall-clock times are measured from the first start of train.py: "trained" is
when the checkpoint was written, "known" when tests.py finished evaluating
it. Prints, for each run, the curve and the first checkpoint that reaches
--target; of several runs, also their accuracies side by side, step by
step, and each run's mean over the last --mean_last steps they all share
(the tables of notes/results.md). --plot also draws every run's test
accuracy against step and against training time, in two panels of one
figure (PNG, PDF or SVG, after the file's extension);
--plot_min_accuracy=0.98 zooms its accuracy axis.
"""

import collections
import json
import os

from absl import app
from absl import flags

import figures

FLAGS = flags.FLAGS

flags.DEFINE_multi_string('train_dir', ['runs/default'],
                          'Directory of a run.')
flags.DEFINE_string('eval_dir', None, 'Default <train_dir>/eval_test, else '
                    '<train_dir>; only with a single --train_dir.')
flags.DEFINE_float('target', 0.99, 'Accuracy whose first arrival to report.')
flags.DEFINE_string('plot', None, 'Also draw the curves of every run into '
                    'this image file (.png, .pdf or .svg).')
flags.DEFINE_integer('mean_last', 3, 'Of several runs: average each run\'s '
                     'accuracy over the last this many steps that every '
                     'run has evaluated.', lower_bound=1)
flags.DEFINE_float('plot_min_accuracy', None, 'Bottom of the plot\'s '
                   'accuracy axis, in [0, 1), to tell curves apart near '
                   'their plateau (e.g. 0.98); default: the whole range.')

EVAL_SUBDIR = 'eval_test'
RESULTS_FILE = 'results.jsonl'
STARTS_FILE = 'starts.jsonl'

# A run as report.py reads it: its name in tables and legends, its
# directory, the records of starts.jsonl and those of results.jsonl.
Run = collections.namedtuple('Run', ['name', 'train_dir', 'starts',
                                     'records'])


def read_jsonl(path):
  """The records of a JSON-lines file; a clear error if it is missing,
  malformed or empty."""
  if not os.path.exists(path):
    raise app.UsageError(f'{path} not found')
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise app.UsageError(f'{path}:{number} is not JSON: {e}') from e
  if not records:
    raise app.UsageError(f'{path} holds no records yet')
  return records


def results_path(train_dir, eval_dir=None):
  """results.jsonl of a run: in eval_dir if given, else in
  <train_dir>/eval_test where tests.py writes it, else in train_dir."""
  if eval_dir:
    return os.path.join(eval_dir, RESULTS_FILE)
  path = os.path.join(train_dir, EVAL_SUBDIR, RESULTS_FILE)
  kept = os.path.join(train_dir, RESULTS_FILE)
  return kept if not os.path.exists(path) and os.path.exists(kept) else path


def run_names(train_dirs):
  """Names for the runs: their directories' base names, or, where two
  share one, the paths as given."""
  bases = [os.path.basename(os.path.normpath(d)) for d in train_dirs]
  if len(set(bases)) == len(bases):
    return bases
  return [os.path.normpath(d) for d in train_dirs]


def load_run(name, train_dir, eval_dir=None):
  """Reads a run's starts and results.

  Raises:
    app.UsageError: the directory or one of its files is missing or empty.
  """
  if not os.path.isdir(train_dir):
    raise app.UsageError(f'--train_dir {train_dir} does not exist')
  return Run(name, train_dir,
             read_jsonl(os.path.join(train_dir, STARTS_FILE)),
             read_jsonl(results_path(train_dir, eval_dir)))


def _minutes(seconds):
  return f'{max(seconds, 0.0) / 60:.1f}'


def trained_seconds(record, start):
  """Seconds from the first start of train.py to the checkpoint of
  `record` (to its evaluation when the checkpoint time is unknown)."""
  return (record.get('checkpoint_time') or record['time']) - start


def curve_table(records, start):
  """Markdown rows: step, minutes trained, minutes known, accuracy, images."""
  rows = ['| step | trained (min) | known (min) | test accuracy | error | '
          'test images |', '|---:|---:|---:|---:|---:|---:|']
  for r in sorted(records, key=lambda r: r['step']):
    trained = (_minutes(r['checkpoint_time'] - start)
               if r.get('checkpoint_time') else '')
    rows.append(f"| {r['step']} | {trained} | {_minutes(r['time'] - start)} "
                f"| {r['accuracy']:.4f} | {_percent(1 - r['accuracy'])} | "
                f"{r['images_evaluated']} |")
  return '\n'.join(rows)


def first_reaching(records, target):
  """The record of the lowest step whose accuracy is >= target, or None."""
  hits = [r for r in records if r['accuracy'] >= target]
  return min(hits, key=lambda r: r['step']) if hits else None


def summary(run, target):
  """The markdown table of a run and the lines that follow it."""
  start = run.starts[0]['time']
  lines = [curve_table(run.records, start)]
  best = max(run.records, key=lambda r: r['accuracy'])
  lines.append(f"\nbest: {best['accuracy']:.4f} at step {best['step']} "
               f"({best['images_evaluated']} test images)")
  if len(run.starts) > 1:
    lines.append(f'train.py was (re)started {len(run.starts)} times; times '
                 'include any pause between runs.')
  hit = first_reaching(run.records, target)
  if hit is None:
    lines.append(f'{target:.4f} not reached.')
  else:
    lines.append(
        f"first >= {target:.4f}: step {hit['step']}, accuracy "
        f"{hit['accuracy']:.4f}, checkpoint written "
        f'{_minutes(trained_seconds(hit, start))} min after the start, '
        f"result known {_minutes(hit['time'] - start)} min after the start.")
  return '\n'.join(lines)


def _percent(accuracy):
  return f'{100 * accuracy:.2f}%'


def side_by_side(runs, mean_last):
  """Markdown: the runs' test accuracies by step, one column per run, and
  a last row with each run's mean over the last `mean_last` steps that
  every run has (all of them if fewer); a sentence instead when they share
  none."""
  by_step = [{r['step']: r['accuracy'] for r in run.records} for run in runs]
  steps = sorted(set().union(*by_step))
  rows = ['| step | ' + ' | '.join(run.name for run in runs) + ' |',
          '|---:|' + '---:|' * len(runs)]
  for step in steps:
    cells = [_percent(a[step]) if step in a else '' for a in by_step]
    rows.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  shared = sorted(set.intersection(*(set(a) for a in by_step)))[-mean_last:]
  if not shared:
    return '\n'.join(rows) + '\n\nThe runs share no evaluated step.'
  label = (f'mean of step {shared[0]}' if len(shared) == 1 else
           f'mean of steps {shared[0]}-{shared[-1]} ({len(shared)})')
  means = [_percent(sum(a[s] for s in shared) / len(shared)) for a in by_step]
  rows.append(f'| {label} | ' + ' | '.join(means) + ' |')
  return '\n'.join(rows)


def curve(run):
  """(steps, minutes trained, accuracies) of a run, by step."""
  start = run.starts[0]['time']
  records = sorted(run.records, key=lambda r: r['step'])
  return ([r['step'] for r in records],
          [max(trained_seconds(r, start), 0.0) / 60 for r in records],
          [r['accuracy'] for r in records])


def draw(runs, target, min_accuracy=None):
  """A figure with two panels: test accuracy against step, and against
  minutes of training; one line per run, a legend of run names, and the
  target as a dotted line. With `min_accuracy`, the accuracy axis runs
  from it to just above the best accuracy or the target, whichever is
  higher, and lower points fall outside the view."""
  figure = figures.new_figure((11, 4.5))
  by_step, by_time = figure.subplots(1, 2, sharey=True)
  best = 0.0
  for run in runs:
    steps, minutes, accuracies = curve(run)
    by_step.plot(steps, accuracies, marker='.', label=run.name)
    by_time.plot(minutes, accuracies, marker='.', label=run.name)
    best = max(best, *accuracies)
  for axes, label in ((by_step, 'training step'),
                      (by_time, 'training time (minutes since the first '
                       'start)')):
    axes.axhline(target, color='grey', linestyle=':', linewidth=1,
                 label=f'target {target:g}')
    axes.set_xlabel(label)
    axes.grid(alpha=0.3)
  if min_accuracy is not None:
    by_step.set_ylim(min_accuracy, max(best, target, min_accuracy) + 0.001)
  by_step.set_ylabel('test accuracy')
  by_step.set_title('against step')
  by_time.set_title('against wall-clock time')
  by_time.legend(loc='lower right')
  return figure


def _runs():
  """The runs of --train_dir, checked."""
  train_dirs = FLAGS.train_dir
  if FLAGS.eval_dir and len(train_dirs) > 1:
    raise app.UsageError('--eval_dir needs a single --train_dir; the runs '
                         'of several are read from <train_dir>/eval_test.')
  return [load_run(name, train_dir, FLAGS.eval_dir)
          for name, train_dir in zip(run_names(train_dirs), train_dirs)]


def _check_min_accuracy():
  """--plot_min_accuracy is a fraction below 1, and only with --plot."""
  value = FLAGS.plot_min_accuracy
  if value is None:
    return
  if not FLAGS.plot:
    raise app.UsageError('--plot_min_accuracy needs --plot')
  if not 0 <= value < 1:
    raise app.UsageError(f'--plot_min_accuracy={value:g}: an accuracy in '
                         '[0, 1), such as 0.98')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  file_format = figures.file_format(FLAGS.plot) if FLAGS.plot else None
  _check_min_accuracy()
  runs = _runs()
  for k, run in enumerate(runs):
    if len(runs) > 1:
      print(('\n' if k else '') + f'## {run.name} ({run.train_dir})\n')
    print(summary(run, FLAGS.target))
  if len(runs) > 1:
    print('\n## side by side\n')
    print(side_by_side(runs, FLAGS.mean_last))
  if FLAGS.plot:
    try:
      figure = draw(runs, FLAGS.target, FLAGS.plot_min_accuracy)
    except ImportError as e:
      raise app.UsageError('--plot needs matplotlib: pip install -r '
                           f'requirements.txt ({e})') from e
    figures.save_atomically(figure, FLAGS.plot, file_format)
    print(f'\nplot: {FLAGS.plot}')


if __name__ == '__main__':
  app.run(main)
