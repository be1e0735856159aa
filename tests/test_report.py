"""report.py on fake runs: the tables of one or several runs, --plot, and
clear errors for bad paths.

A fake run holds what train.py and tests.py write: starts.jsonl with one
line per (re)start, and eval_test/results.jsonl with one line per evaluated
checkpoint.
"""

import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
START = 1_800_000_000.0  # the first start of train.py, in seconds
SIGNATURES = {'png': b'\x89PNG\r\n\x1a\n', 'pdf': b'%PDF-', 'svg': b'<?xml'}


def _write_jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def _result(step, accuracy, minutes_trained, checkpoint_time=True):
  """A line of tests.py's results.jsonl; evaluated a minute after the
  checkpoint."""
  written = START + 60 * minutes_trained
  return {'step': step, 'accuracy': accuracy, 'images_evaluated': 10000,
          'per_class_accuracy': [accuracy] * 10, 'eval_seconds': 30.0,
          'time': written + 60, 'checkpoint': f'model.ckpt-{step}',
          'checkpoint_time': written if checkpoint_time else None}


def _fake_run(train_dir, results, restarts=()):
  """A run directory as train.py (starts.jsonl) and tests.py
  (eval_test/results.jsonl) leave it."""
  starts = [{'step': 0, 'time': START, 'argv': ['src/train.py']}]
  starts += [{'step': step, 'time': START + 60 * minutes,
              'argv': ['src/train.py']} for step, minutes in restarts]
  _write_jsonl(train_dir / 'starts.jsonl', starts)
  _write_jsonl(train_dir / 'eval_test' / 'results.jsonl', results)
  return train_dir


@pytest.fixture(name='runs')
def fixture_runs(tmp_path):
  """Two runs: a fast one, and a slower one resumed once whose last result
  lacks its checkpoint time."""
  fast = _fake_run(tmp_path / 'fast', [
      _result(0, 0.10, 0), _result(1000, 0.95, 2), _result(2000, 0.991, 4)])
  slow = _fake_run(tmp_path / 'slow', [
      _result(0, 0.11, 0), _result(1000, 0.90, 6),
      _result(2000, 0.97, 15, checkpoint_time=False)], restarts=[(1000, 8)])
  return fast, slow


def _report(*args):
  return subprocess.run([sys.executable, os.path.join('src', 'report.py'),
                         *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)


def _succeeded(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _failed(result, message):
  assert result.returncode != 0, result.stdout[-3000:]
  output = result.stdout + result.stderr
  assert 'Traceback' not in output, output[-3000:]
  assert message in output, output[-3000:]


def test_one_run_prints_its_table(runs):
  output = _succeeded(_report('--train_dir', runs[0], '--target=0.99'))
  assert output.startswith('| step | trained (min) | known (min) |')
  assert '## ' not in output
  assert '| 1000 | 2.0 | 3.0 | 0.9500 | 5.00% | 10000 |' in output
  assert 'best: 0.9910 at step 2000' in output
  assert ('first >= 0.9900: step 2000, accuracy 0.9910, checkpoint written '
          '4.0 min after the start, result known 5.0 min') in output
  assert 'plot' not in output


def test_several_runs_print_a_table_each(runs):
  output = _succeeded(_report('--train_dir', runs[0], '--train_dir',
                              runs[1], '--target=0.99'))
  assert output.startswith(f'## fast ({runs[0]})\n')
  assert f'\n## slow ({runs[1]})\n' in output
  assert output.count('| step | trained (min)') == 2
  assert 'train.py was (re)started 2 times' in output
  assert '0.9900 not reached.' in output  # the slow run


def test_several_runs_side_by_side_with_their_means(runs):
  output = _succeeded(_report('--train_dir', runs[0], '--train_dir',
                              runs[1], '--mean_last=2'))
  table = output.split('\n## side by side\n\n', 1)[1]
  assert table.splitlines() == [
      '| step | fast | slow |', '|---:|---:|---:|',
      '| 0 | 10.00% | 11.00% |', '| 1000 | 95.00% | 90.00% |',
      '| 2000 | 99.10% | 97.00% |',
      '| mean of steps 1000-2000 (2) | 97.05% | 93.50% |']


def test_side_by_side_averages_only_the_steps_all_runs_share(tmp_path):
  longer = _fake_run(tmp_path / 'longer', [
      _result(1000, 0.5, 1), _result(2000, 0.7, 2), _result(3000, 0.9, 3)])
  shorter = _fake_run(tmp_path / 'shorter', [
      _result(1000, 0.4, 1), _result(2000, 0.6, 2)])
  disjoint = _fake_run(tmp_path / 'disjoint', [_result(500, 0.3, 1)])
  output = _succeeded(_report('--train_dir', longer, '--train_dir', shorter))
  assert '| 3000 | 90.00% |  |' in output
  assert '| mean of steps 1000-2000 (2) | 60.00% | 50.00% |' in output
  output = _succeeded(_report('--train_dir', longer, '--train_dir', shorter,
                              '--mean_last=1'))
  assert '| mean of step 2000 | 70.00% | 60.00% |' in output
  output = _succeeded(_report('--train_dir', longer, '--train_dir', disjoint))
  assert 'The runs share no evaluated step.' in output
  assert '| mean of' not in output


def test_one_run_has_no_side_by_side_table(runs):
  output = _succeeded(_report('--train_dir', runs[0]))
  assert 'side by side' not in output


def test_bad_mean_last_fails_clearly(runs):
  _failed(_report('--train_dir', runs[0], '--train_dir', runs[1],
                  '--mean_last=0'), 'mean_last')


def test_runs_of_the_same_name_are_told_apart_by_path(tmp_path):
  first = _fake_run(tmp_path / 'a' / 'train', [_result(0, 0.1, 0)])
  second = _fake_run(tmp_path / 'b' / 'train', [_result(0, 0.2, 0)])
  output = _succeeded(_report('--train_dir', first, '--train_dir', second))
  assert f'## {first} ({first})' in output
  assert f'## {second} ({second})' in output


def _png_size(data):
  """(width, height) from a PNG's IHDR chunk."""
  assert data[12:16] == b'IHDR'
  return struct.unpack('>II', data[16:24])


@pytest.mark.parametrize('extension', ['png', 'pdf', 'svg'])
def test_plot_of_two_runs(runs, tmp_path, extension):
  plot = tmp_path / 'plots' / f'curves.{extension}'
  plot.parent.mkdir()
  output = _succeeded(_report('--train_dir', runs[0], '--train_dir',
                              runs[1], '--plot', plot))
  assert f'plot: {plot}' in output
  data = plot.read_bytes()
  assert data.startswith(SIGNATURES[extension])
  if extension == 'png':
    width, height = _png_size(data)
    assert width > height > 100  # two panels side by side
  assert [p.name for p in plot.parent.iterdir()] == [plot.name]  # no .tmp


def test_plot_replaces_an_older_plot(runs, tmp_path):
  plot = tmp_path / 'curves.png'
  plot.write_bytes(b'old')
  _succeeded(_report('--train_dir', runs[0], '--plot', plot))
  assert plot.read_bytes().startswith(SIGNATURES['png'])


def test_plot_of_a_run_kept_in_notes_layout(tmp_path):
  """A run whose results.jsonl sits beside starts.jsonl (notes/runs)."""
  run = tmp_path / 'kept'
  _write_jsonl(run / 'starts.jsonl', [{'step': 0, 'time': START}])
  _write_jsonl(run / 'results.jsonl', [_result(0, 0.1, 0),
                                       _result(1000, 0.9, 3)])
  plot = tmp_path / 'kept.png'
  output = _succeeded(_report('--train_dir', run, '--plot', plot))
  assert '| 1000 | 3.0 | 4.0 | 0.9000 |' in output
  assert plot.read_bytes().startswith(SIGNATURES['png'])


_Y_LIMITS = """
import json, sys
import report
runs = [report.load_run(name, path) for name, path in
        zip(('fast', 'slow'), sys.argv[1:3])]
for min_accuracy in (None, 0.9):
  figure = report.draw(runs, 0.99, min_accuracy)
  print(json.dumps(figure.axes[0].get_ylim()))
"""


def test_plot_min_accuracy_zooms_the_accuracy_axis(runs):
  # In a process of its own: report.py's flags would clash with those of
  # the other scripts that the suite imports.
  result = subprocess.run([sys.executable, '-c', _Y_LIMITS, *map(str, runs)],
                          cwd=REPO / 'src', capture_output=True, text=True,
                          timeout=120, check=False)
  whole, zoomed = map(json.loads, _succeeded(result).split('\n')[:2])
  assert whole[0] < 0.1
  assert zoomed == pytest.approx([0.9, 0.992])  # up to the best, 0.991


@pytest.mark.parametrize('value,plot,message', [
    ('1.5', True, '--plot_min_accuracy=1.5: an accuracy in [0, 1)'),
    ('-0.1', True, '--plot_min_accuracy=-0.1: an accuracy in [0, 1)'),
    ('0.9', False, '--plot_min_accuracy needs --plot'),
])
def test_bad_plot_min_accuracy_fails_clearly(runs, tmp_path, value, plot,
                                             message):
  args = ['--train_dir', runs[0], f'--plot_min_accuracy={value}']
  if plot:
    args += ['--plot', tmp_path / 'curves.png']
  _failed(_report(*args), message)
  assert not (tmp_path / 'curves.png').exists()


@pytest.mark.parametrize('case,message', [
    ('missing_run', '--train_dir {tmp}/missing does not exist'),
    ('no_results', '{tmp}/fast/eval_test/results.jsonl not found'),
    ('empty_results', 'results.jsonl holds no records yet'),
    ('corrupt_results', 'results.jsonl:2 is not JSON'),
    ('missing_plot_dir', '--plot {tmp}/missing/curves.png: directory'),
    ('bad_extension', '--plot {tmp}/curves.jpg: name a .png, .pdf or .svg'),
    ('eval_dir_with_two_runs', '--eval_dir needs a single --train_dir'),
])
def test_bad_paths_fail_clearly(runs, tmp_path, case, message):
  fast, slow = runs
  results = fast / 'eval_test' / 'results.jsonl'
  plot = tmp_path / 'curves.png'
  args = ['--train_dir', fast, '--train_dir', slow]
  if case == 'missing_run':
    args += ['--train_dir', tmp_path / 'missing']
  elif case == 'no_results':
    results.unlink()
  elif case == 'empty_results':
    results.write_text('\n')
  elif case == 'corrupt_results':
    results.write_text(results.read_text().replace('{"step": 1000', '{"st'))
  elif case == 'missing_plot_dir':
    plot = tmp_path / 'missing' / 'curves.png'
  elif case == 'bad_extension':
    plot = tmp_path / 'curves.jpg'
  else:
    args += ['--eval_dir', fast / 'eval_test']
  _failed(_report(*args, '--plot', plot), message.format(tmp=tmp_path))
  assert not plot.exists()
  assert not plot.with_name(plot.name + '.tmp').exists()
