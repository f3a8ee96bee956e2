r"""Where a training loop's time goes: input pipeline, compute, host overhead.

  python -m benchmarks.profile_loop --config=configs/conv_bn.py \
      --data_dir=../shared/mnist

Times, per step and after a warm-up, on the trainer's own code:
  input    the distributed input pipeline alone, drained in a compiled loop;
  full     the training loop as the trainer runs it;
  compute  the same loop fed one batch over and over from a cached dataset,
           so its input costs next to nothing;
  host     what one call of the loop costs beyond its steps: a 1-step loop's
           time minus one compute step, paid once per steps_per_loop steps.
The input share of the full step is (full - compute) / full.
"""

import functools
import time

from absl import app
from absl import flags
import keras
from ml_collections import config_flags
import tensorflow as tf

from mnist_dist import input_pipeline
from mnist_dist import models
from mnist_dist import optimizers
from mnist_dist import steps
from mnist_dist import strategy as strategy_lib

config_flags.DEFINE_config_file('config', None, 'A config of configs/.')
_DATA_DIR = flags.DEFINE_string('data_dir', '../shared/mnist',
                                'Folder with the four MNIST IDX files.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Steps timed per measurement.')


def _per_step_s(fn, num_steps: int) -> float:
  fn(num_steps)  # Warm-up: tracing, autotuning, caches.
  start = time.perf_counter()
  fn(num_steps)
  return (time.perf_counter() - start) / num_steps


def main(argv):
  del argv
  config = flags.FLAGS.config
  config.data.dir = _DATA_DIR.value
  strategy = strategy_lib.create_strategy(config.distribution)
  train_split, _ = input_pipeline.load(config.data, seed=config.seed)
  batch = config.train.global_batch_size
  steps_per_epoch = len(train_split) // batch
  settings = strategy_lib.device_settings(
      config.train, device_kind=strategy_lib.device_kind(strategy),
      steps_per_epoch=steps_per_epoch)
  keras.mixed_precision.set_global_policy(settings.precision)
  with strategy.scope():
    model = models.create_model(config.model)
    optimizer = optimizers.create_optimizer(
        config.optimizer, steps_per_epoch=steps_per_epoch,
        epochs=config.train.epochs, precision=settings.precision,
        skip_nonfinite=False)
    optimizer.build(model.trainable_variables)
  train_loop = steps.make_train_loop(
      strategy=strategy, model=model, optimizer=optimizer,
      global_batch_size=batch, jit_compile=settings.jit_compile,
      stop_on_nonfinite=True)

  dataset_fn = functools.partial(input_pipeline.train_dataset,
                                 split=train_split, global_batch_size=batch,
                                 seed=config.seed)
  real = iter(strategy.distribute_datasets_from_function(dataset_fn))
  fixed = iter(strategy.distribute_datasets_from_function(
      lambda ctx: dataset_fn(ctx).take(1).cache().repeat()))

  @tf.function
  def drain(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(lambda images, labels: tf.shape(images)[0],
                   args=next(iterator))

  timings = {
      'input': _per_step_s(lambda n: drain(real, tf.constant(n)), _STEPS.value),
      'full': _per_step_s(lambda n: train_loop(real, tf.constant(n)),
                          _STEPS.value),
      'compute': _per_step_s(lambda n: train_loop(fixed, tf.constant(n)),
                             _STEPS.value),
  }
  one_call = _per_step_s(lambda n: [train_loop(fixed, tf.constant(1))
                                    for _ in range(n)], 100)
  timings['host'] = one_call - timings['compute']
  print(f'{config.model.name}, global batch {batch}, precision '
        f'{settings.precision}, loops of {settings.steps_per_loop}:')
  for name, seconds in timings.items():
    print(f'  {name:8s} {1e3 * seconds:8.3f} ms per step')
  share = (timings['full'] - timings['compute']) / timings['full']
  print(f'  input share of the full step: {share:.1%}; host overhead per '
        f'loop call: {1e3 * timings["host"]:.3f} ms '
        f'({timings["host"] / settings.steps_per_loop / timings["full"]:.2%} '
        'of the steps it drives)')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
