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
And once a run: trace, the seconds tracing the training loop takes (Python
building its graph, before TensorFlow first runs it).
The input share of the full step is (full - compute) / full.

With --ops=N, also the N op types with the most time in the full loop, from
TensorFlow's profiler: each type's own time per step and its share of the
time all ops took (ops can overlap on the CPU's threads, so the shares, not
the sums, are what to read). Convolutions and matrix products are
compute-bound kernels; the element-wise ops (batch norm's, the relu's, casts,
the optimizer's update) are memory-bound: their share says how much of a
step is not arithmetic.

The run is built by the trainer's own `train.build_run` (in a temporary
workdir, with the outputs off): the same strategy, data, device settings,
model, optimizer and compiled loop as `python -m mnist_dist.main`.
"""

import functools
import glob
import json
import os
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import tensorflow as tf
# The profiler's own conversion of a trace to its per-op table (the one
# TensorBoard's profile plugin shows), reached through TensorFlow's binding.
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

from benchmarks import runner
from mnist_dist import config as config_lib
from mnist_dist import train
from mnist_dist.data import input_pipeline
from mnist_dist.distribution import strategy as strategy_lib

config_flags.DEFINE_config_file('config', None, 'A config of configs/.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Steps timed per measurement.')
_OPS = flags.DEFINE_integer('ops', 0, 'N > 0: also print the N op types '
                            'with the most time in the full loop.')


def _per_step_s(fn, num_steps: int) -> float:
  fn(num_steps)  # Warm-up: tracing, autotuning, caches.
  start = time.perf_counter()
  fn(num_steps)
  return (time.perf_counter() - start) / num_steps


def _op_seconds(loop, num_steps: int) -> dict[str, float]:
  """{op type: its own seconds per step}, most first, over loop(num_steps)."""
  logdir = tempfile.mkdtemp()
  tf.profiler.experimental.start(logdir)
  loop(num_steps)
  tf.profiler.experimental.stop()
  trace = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
  data, _ = _pywrap_profiler_plugin.xspace_to_tools_data(
      trace, 'framework_op_stats', {})
  table = json.loads(data)[0]
  columns = [column['id'] for column in table['cols']]
  seconds = {}
  for row in table['rows']:
    cells = dict(zip(columns, (cell and cell.get('v') for cell in row['c'])))
    if cells['type'] != 'IDLE':
      seconds[cells['type']] = (seconds.get(cells['type'], 0.0) +
                                cells['total_self_time'] / 1e6 / num_steps)
  return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def _profile(run: train.Run
             ) -> tuple[float, dict[str, float], dict[str, float]]:
  """The seconds tracing the training loop takes, {measurement: seconds per
  step} of the run's loop and input, and with --ops, _op_seconds of the
  full loop."""
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

  start = time.perf_counter()
  run.train_loop.get_concrete_function(real, tf.constant(0))
  trace_s = time.perf_counter() - start
  timings = {
      'input': _per_step_s(lambda n: drain(real, tf.constant(n)), _STEPS.value),
      'full': _per_step_s(functools.partial(train_steps, real), _STEPS.value),
      'compute': _per_step_s(functools.partial(train_steps, fixed),
                             _STEPS.value),
  }
  one_call = _per_step_s(lambda n: [train_steps(fixed, 1) for _ in range(n)],
                         100)
  timings['host'] = one_call - timings['compute']
  ops = _op_seconds(functools.partial(train_steps, real),
                    _STEPS.value) if _OPS.value else {}
  return trace_s, timings, ops


def main(argv):
  del argv
  config = flags.FLAGS.config
  config.data.dir = runner.DATA_DIR.value
  config.outputs.tensorboard = False
  config.outputs.saved_model = False
  config.outputs.plots = False
  with tempfile.TemporaryDirectory() as workdir:
    config_lib.validate(config)
    run = train.build_run(
        config, workdir, chief=True,
        strategy=strategy_lib.create_strategy(config.distribution))
    trace_s, timings, ops = _profile(run)
  settings = run.settings
  print(f'{config.model.name}, global batch {config.train.global_batch_size}, '
        f'precision {settings.precision}, loops of {settings.steps_per_loop}:')
  print(f'  trace    {trace_s:8.3f} s, once a run')
  for name, seconds in timings.items():
    print(f'  {name:8s} {1e3 * seconds:8.3f} ms per step')
  share = (timings['full'] - timings['compute']) / timings['full']
  print(f'  input share of the full step: {share:.1%}; host overhead per '
        f'loop call: {1e3 * timings["host"]:.3f} ms '
        f'({timings["host"] / settings.steps_per_loop / timings["full"]:.2%} '
        'of the steps it drives)')
  if ops:
    print('op types with the most time in the full loop (ms per step, share '
          'of all ops\' time):')
    total = sum(ops.values())
    for name, seconds in list(ops.items())[:_OPS.value]:
      print(f'  {name:32s} {1e3 * seconds:8.3f} {seconds / total:6.1%}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
