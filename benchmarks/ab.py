r"""An interleaved A/B of two training loops in one process: is B faster?

  python -m benchmarks.ab --a=configs/conv_bn.py \
      --b=configs/conv_bn.py --b.train.precision=mixed_bfloat16 \
      --data_dir=../shared/mnist --rounds=3

Builds both runs with the trainer's own `train.build_run` (temporary
workdirs, outputs off): the same strategy, data, device settings, model,
optimizer and compiled loop as `python -m mnist_dist.main` with each config
and its `--a.x=y` / `--b.x=y` overrides. Each loop is traced and warmed up
first; then each round times --steps steps of both, alternating which goes
first (AB, BA, AB, ...), so that both see the same machine: on a shared one
speed moves by 2x within minutes, far more than most levers move it, while
rounds taken back to back see the same load. Prints each round's examples/s
and B/A, and the verdict: B wins only if it is faster in every round
(docs/performance.md keeps a lever by this rule).
"""

import statistics
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import tensorflow as tf

from benchmarks import runner
from mnist_dist import config as config_lib
from mnist_dist import train
from mnist_dist.distribution import strategy as strategy_lib

config_flags.DEFINE_config_file('a', None, 'Config A, of configs/.')
config_flags.DEFINE_config_file('b', None, 'Config B (the lever).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of A and B.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Steps timed per loop a round.')


def verdict(ratios: list[float]) -> str:
  """What rounds of B/A examples/s say, in one line."""
  wins = sum(ratio > 1 for ratio in ratios)
  return (f'B/A {min(ratios):.2f}x to {max(ratios):.2f}x (median '
          f'{statistics.median(ratios):.2f}x); B faster in {wins} of '
          f'{len(ratios)} rounds: '
          + ('B wins' if wins == len(ratios) else 'no win'))


def _timed_loop(config, workdir: str):
  """examples/s of config's training loop over --steps steps, a function."""
  config.data.dir = runner.DATA_DIR.value
  config.outputs.tensorboard = False
  config.outputs.saved_model = False
  config.outputs.plots = False
  config_lib.validate(config)
  run = train.build_run(
      config, workdir, chief=True,
      strategy=strategy_lib.create_strategy(config.distribution))
  state = train.resume(run)

  def examples_per_s(num_steps: int) -> float:
    start = time.perf_counter()
    # Totals.numpy() waits for the loop to finish on the device.
    run.train_loop(state.train_iterator, tf.constant(num_steps)).numpy()
    return num_steps * config.train.global_batch_size / (
        time.perf_counter() - start)

  for _ in range(2):  # Tracing, oneDNN's first kernels, the input's buffers.
    examples_per_s(_STEPS.value)
  return examples_per_s


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as a_dir, \
      tempfile.TemporaryDirectory() as b_dir:
    loops = {'A': _timed_loop(flags.FLAGS.a, a_dir),
             'B': _timed_loop(flags.FLAGS.b, b_dir)}
    print(runner.describe_machine())
    runner.print_header('round', 'A examples/s', 'B examples/s', 'B/A')
    ratios = []
    for index in range(_ROUNDS.value):
      order = 'AB' if index % 2 == 0 else 'BA'
      speed = {name: loops[name](_STEPS.value) for name in order}
      ratios.append(speed['B'] / speed['A'])
      runner.print_row(index + 1, f'{speed["A"]:,.0f}', f'{speed["B"]:,.0f}',
                       f'{ratios[-1]:.2f}x')
  print(verdict(ratios))


if __name__ == '__main__':
  flags.mark_flags_as_required(['a', 'b'])
  app.run(main)
