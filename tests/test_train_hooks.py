"""train.py's progress hook: a NaN or Inf loss stops training."""

import math

import pytest
import tensorflow as tf

import train


def _after_run(hook, loss):
  values = {'global_step': 41, 'loss': loss, 'margin': 0.3,
            'learning_rate': 1e-3, 'gradient_norm': 1.0,
            'train_accuracy': 0.5}
  hook.after_run(None, tf.compat.v1.train.SessionRunValues(
      results=values, options=None, run_metadata=None))


@pytest.mark.parametrize('loss', [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_with_a_clear_message(loss):
  hook = train.ProgressHook({}, 10, 24, 100, '/some/run')
  with pytest.raises(train.NonFiniteLossError, match='at step 42') as error:
    _after_run(hook, loss)
  assert '/some/run' in str(error.value)


def test_finite_loss_goes_on():
  hook = train.ProgressHook({}, 10, 24, 100, '/some/run')
  for _ in range(3):
    _after_run(hook, 0.25)
