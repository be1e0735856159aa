"""requirements.txt (CPU) and requirements-gpu.txt pin the same versions.

The two differ only in TensorFlow's wheel: tensorflow-cpu on the CPU,
tensorflow[and-cuda] on a GPU machine, at the same version. The GPU file
lists the other pins itself instead of including requirements.txt, which
would install the CPU wheel beside the GPU one.
"""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CPU = REPO / 'requirements.txt'
GPU = REPO / 'requirements-gpu.txt'
# name, optional [extras], ==version.
PIN = re.compile(r'([A-Za-z0-9._-]+)(\[[A-Za-z0-9_,.-]+\])?'
                 r'==([A-Za-z0-9.+!-]+)')


def _pins(path):
  """{name with extras, lower case: version} of a requirements file.

  Fails on any line that is not a comment or an exact pin (an include such
  as -r, an option, a range).
  """
  pins = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    match = PIN.fullmatch(line)
    assert match, f'{path.name}:{number}: not an exact pin: {line!r}'
    name = match[1].lower() + (match[2] or '')
    assert name not in pins, f'{path.name}:{number}: {name} pinned twice'
    pins[name] = match[3]
  return pins


@pytest.fixture(name='pins')
def fixture_pins():
  return _pins(CPU), _pins(GPU)


def test_same_tensorflow_version(pins):
  cpu, gpu = pins
  assert 'tensorflow-cpu' in cpu
  assert 'tensorflow[and-cuda]' in gpu
  assert gpu['tensorflow[and-cuda]'] == cpu['tensorflow-cpu']


def test_gpu_file_does_not_install_the_cpu_wheel(pins):
  _, gpu = pins
  assert not [name for name in gpu if name.startswith('tensorflow-cpu')]
  assert [name for name in gpu if name.startswith('tensorflow')] == [
      'tensorflow[and-cuda]']


def test_same_other_packages(pins):
  cpu, gpu = pins
  del cpu['tensorflow-cpu'], gpu['tensorflow[and-cuda]']
  assert gpu == cpu
  assert 'matplotlib' in cpu  # report.py --plot
