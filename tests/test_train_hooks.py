"""train.py's hooks: a NaN or Inf loss stops training; checkpoints fall on
the multiples of --save_checkpoint_steps."""

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
  assert '--min_mass=1e-10' in str(error.value)


def test_finite_loss_goes_on():
  hook = train.ProgressHook({}, 10, 24, 100, '/some/run')
  for _ in range(3):
    _after_run(hook, 0.25)


def _triggers(timer, steps):
  """The steps at which `timer` fires, as the checkpoint hook asks it."""
  fired = []
  for step in steps:
    if timer.should_trigger_for_step(step):
      timer.update_last_triggered_step(step)
      fired.append(step)
  return fired


def test_checkpoints_fall_on_multiples_of_the_period_after_a_resume():
  """A run stopped at step 1,556 and resumed saves there (the restored
  step), then at 2,000 and 3,000, not at 2,556."""
  timer = train.MultipleOfStepsTimer(1000)
  assert _triggers(timer, [1556]) == [1556]
  assert _triggers(timer, range(1557, 3200)) == [2000, 3000]


def test_a_run_from_step_0_saves_at_every_multiple():
  timer = train.MultipleOfStepsTimer(3)
  assert _triggers(timer, range(0, 10)) == [0, 3, 6, 9]

