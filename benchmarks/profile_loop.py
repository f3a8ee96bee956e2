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

The run is built by the trainer's own `train.build_run` (in a temporary
workdir, with the outputs off): the same strategy, data, device settings,
model, optimizer and compiled loop as `python -m mnist_dist.main`.
"""

import functools
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import tensorflow as tf

from benchmarks import runner
from mnist_dist import input_pipeline
from mnist_dist import train

config_flags.DEFINE_config_file('config', None, 'A config of configs/.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Steps timed per measurement.')


def _per_step_s(fn, num_steps: int) -> float:
  fn(num_steps)  # Warm-up: tracing, autotuning, caches.
  start = time.perf_counter()
  fn(num_steps)
  return (time.perf_counter() - start) / num_steps


def _profile(run: train.Run) -> dict[str, float]:
  """{measurement: seconds per step} of the run's loop and input."""
  strategy, config = run.strategy, run.config
  dataset_fn = functools.partial(
      input_pipeline.train_dataset, split=run.splits['train'],
      global_batch_size=config.train.global_batch_size, seed=config.seed,
      augment_config=config.data.augment)
  real = iter(strategy.distribute_datasets_from_function(dataset_fn))
  fixed = iter(strategy.distribute_datasets_from_function(
      lambda ctx: dataset_fn(ctx).take(1).cache().repeat()))

  @tf.function
  def drain(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(lambda images, labels: tf.shape(images)[0],
                   args=next(iterator))

  def train_steps(iterator, num_steps):
    # Totals.numpy() waits for the loop to finish on the device.
    return run.train_loop(iterator, tf.constant(num_steps)).numpy()

  timings = {
      'input': _per_step_s(lambda n: drain(real, tf.constant(n)), _STEPS.value),
      'full': _per_step_s(functools.partial(train_steps, real), _STEPS.value),
      'compute': _per_step_s(functools.partial(train_steps, fixed),
                             _STEPS.value),
  }
  one_call = _per_step_s(lambda n: [train_steps(fixed, 1) for _ in range(n)],
                         100)
  timings['host'] = one_call - timings['compute']
  return timings


def main(argv):
  del argv
  config = flags.FLAGS.config
  config.data.dir = runner.DATA_DIR.value
  config.outputs.tensorboard = False
  config.outputs.saved_model = False
  config.outputs.plots = False
  with tempfile.TemporaryDirectory() as workdir:
    run = train.build_run(config, workdir)
    timings = _profile(run)
  settings = run.settings
  print(f'{config.model.name}, global batch {config.train.global_batch_size}, '
        f'precision {settings.precision}, loops of {settings.steps_per_loop}:')
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
