"""The optimizer and its learning-rate schedule.

OPTIMIZERS and SCHEDULES build the choices of optimizer.name and
optimizer.schedule, config.OPTIMIZERS and config.SCHEDULES
(tests/test_configs.py holds the names equal).
"""

import keras

# optimizer.name -> its Keras class.
OPTIMIZERS = {'sgd': keras.optimizers.SGD, 'adam': keras.optimizers.Adam}
NAMES = tuple(OPTIMIZERS)


def _exponential(optimizer_config, *, steps_per_epoch: int, epochs: int):
  del epochs
  return keras.optimizers.schedules.ExponentialDecay(
      optimizer_config.learning_rate,
      decay_steps=steps_per_epoch,
      decay_rate=optimizer_config.decay_rate,
      staircase=optimizer_config.staircase)


def _cosine(optimizer_config, *, steps_per_epoch: int, epochs: int):
  warmup_steps = round(optimizer_config.warmup_epochs * steps_per_epoch)
  return keras.optimizers.schedules.CosineDecay(
      0.0, decay_steps=epochs * steps_per_epoch - warmup_steps,
      warmup_target=optimizer_config.learning_rate,
      warmup_steps=warmup_steps)


# optimizer.schedule -> its builder (see learning_rate_schedule).
SCHEDULES = {'exponential': _exponential, 'cosine': _cosine}
SCHEDULE_NAMES = tuple(SCHEDULES)


def learning_rate_schedule(
    optimizer_config, *, steps_per_epoch: int, epochs: int
) -> keras.optimizers.schedules.LearningRateSchedule:
  """The schedule of optimizer.schedule, as a function of the step.

  exponential: lr(step) = learning_rate * decay_rate ** (step / steps_per_epoch).
  With staircase (the codelab's per-epoch decay) the exponent is the whole
  epoch number, so every step of epoch e uses learning_rate * decay_rate**e.

  cosine: linear from 0 to learning_rate over warmup_epochs, then half a
  cosine down to 0 at the end of the last epoch.
  """
  return SCHEDULES[optimizer_config.schedule](
      optimizer_config, steps_per_epoch=steps_per_epoch, epochs=epochs)


def create_optimizer(optimizer_config, *, steps_per_epoch: int, epochs: int,
                     precision: str,
                     skip_nonfinite: bool) -> keras.optimizers.Optimizer:
  """Builds the optimizer; call it inside the strategy's scope.

  skip_nonfinite: leave the weights and the optimizer's state untouched on a
  step whose gradients are not finite, on every replica alike.
  """
  schedule = learning_rate_schedule(optimizer_config,
                                    steps_per_epoch=steps_per_epoch,
                                    epochs=epochs)
  betas = ({'beta_1': optimizer_config.beta_1,
            'beta_2': optimizer_config.beta_2}
           if optimizer_config.name == 'adam' else {})
  optimizer = OPTIMIZERS[optimizer_config.name](learning_rate=schedule,
                                                **betas)
  if precision == 'mixed_float16':
    # float16 gradients underflow without a dynamic loss scale; skipping
    # non-finite steps is part of what it does.
    return keras.optimizers.LossScaleOptimizer(optimizer)
  if skip_nonfinite:
    # Keras's loss-scale optimizer is the tested way to skip a step under any
    # strategy. Its scale starts at 1 and only halves after a skipped step:
    # powers of two, so the float32 arithmetic is otherwise unchanged.
    return keras.optimizers.LossScaleOptimizer(
        optimizer, initial_scale=1.0, dynamic_growth_steps=2**31 - 1)
  return optimizer
