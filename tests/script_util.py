"""Running the repository's scripts as a user does, in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from datasets import mnist

REPO = pathlib.Path(__file__).resolve().parent.parent


def run(script, *args, cwd=REPO, timeout=120, isolated=False):
  """Runs src/`script` with `args`; returns the CompletedProcess.

  Args:
    script: a file name in src/.
    args: its command-line arguments (converted with str).
    cwd: working directory.
    timeout: seconds before the process is killed and the test fails.
    isolated: drop PYTHONPATH, so the script sees nothing of the tests.
  """
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if isolated:
    env.pop('PYTHONPATH', None)
  return subprocess.run([sys.executable, str(REPO / 'src' / script),
                         *map(str, args)],
                        cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=env, check=False)


def succeeded(result):
  """Asserts a zero exit; returns the result."""
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def failed(result, *messages):
  """Asserts a non-zero exit without a traceback whose output names every
  one of `messages`."""
  assert result.returncode != 0, (result.stdout + result.stderr)[-3000:]
  output = result.stdout + result.stderr
  assert 'Traceback' not in output, output[-3000:]
  for message in messages:
    assert message in output, output[-3000:]
  return result


def jsonl(path):
  """The records of a JSON-lines file (results.jsonl, starts.jsonl)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def mnist_dir():
  """The directory of the real MNIST files ($CAPSULES_MNIST_DIR or
  data/mnist), or skip the test."""
  directory = os.environ.get('CAPSULES_MNIST_DIR',
                             str(REPO / 'data' / 'mnist'))
  if not all(os.path.exists(os.path.join(directory, name))
             for name in mnist.FILE_MD5):
    pytest.skip(f'real MNIST files not found in {directory}')
  return os.path.abspath(directory)
