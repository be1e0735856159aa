"""Schedules: the inverse temperature over routing iterations, and the margin
of the spread loss over training steps."""

import tensorflow as tf

INVERSE_TEMPERATURE_SCHEDULES = ('constant', 'authors')
MARGIN_SCHEDULES = ('linear', 'sigmoid')


def inverse_temperature(schedule, final_lambda):
  """lambda_t for the routing iteration t = 0, 1, ...

  'constant': lambda_t = final_lambda.
  'authors':  lambda_t = final_lambda (1 - 0.95^(t + 1)), the schedule of the
              authors' code (google-research/capsule_em).

  Returns:
    a function t -> lambda_t.
  """
  if schedule == 'constant':
    return lambda t: final_lambda
  if schedule == 'authors':
    return lambda t: final_lambda * (1.0 - 0.95 ** (t + 1))
  raise ValueError(f'unknown inverse temperature schedule {schedule!r}; '
                   f'choose one of {INVERSE_TEMPERATURE_SCHEDULES}')


def margin(global_step, schedule, start=0.2, end=0.9, ramp_steps=10000):
  """The spread-loss margin m at a training step.

  'linear':  from `start` to `end` over `ramp_steps`, then `end` (the paper:
             "starting from a small margin of 0.2 and linearly increasing it
             during training to 0.9").
  'sigmoid': start + (end - start) * logistic(min(10, step / ramp_steps - 4)),
             the authors' schedule (google-research/capsule_em uses
             start 0.2, end 0.99, ramp_steps 50000): the margin is half-way
             at 4 * ramp_steps.

  Args:
    global_step: scalar integer tensor.
    schedule: 'linear' or 'sigmoid'.
    start, end: the margins at the beginning and the end of the ramp.
    ramp_steps: length of the ramp in steps (> 0).

  Returns:
    scalar float32 tensor.
  """
  if ramp_steps <= 0:
    raise ValueError(f'ramp_steps must be > 0, got {ramp_steps}')
  progress = tf.cast(global_step, tf.float32) / float(ramp_steps)
  if schedule == 'linear':
    fraction = tf.minimum(progress, 1.0)
  elif schedule == 'sigmoid':
    fraction = tf.sigmoid(tf.minimum(10.0, progress - 4.0))
  else:
    raise ValueError(f'unknown margin schedule {schedule!r}; choose one of '
                     f'{MARGIN_SCHEDULES}')
  return start + (end - start) * fraction
