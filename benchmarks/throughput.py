r"""Training throughput: the codelab's model.fit recipe vs this trainer.

  python -m benchmarks.throughput --data_dir=../shared/mnist --out=/tmp/throughput

For each config, in one run and on the same machine: the codelab recipe
(benchmarks/codelab_fit.py) and this trainer with its defaults
(python -m mnist_dist.main), each in a fresh process, each training 2 epochs
on the real MNIST with the config's global batch. The second epoch's training
examples/s is compared (the first pays for tracing and warm-up; evaluation is
not timed). Ratios, not absolute speeds, are what compare across machines.
Also reports this trainer's time from command to the end of its first step
loop. Prints a Markdown table and writes it with the raw numbers to
OUT/throughput.json.
"""

import datetime
import os
import re

from absl import app
from absl import flags

from benchmarks import runner

_OUT = flags.DEFINE_string('out', '/tmp/throughput', 'Output folder.')
_CONFIGS = flags.DEFINE_list('configs', list(runner.LADDER),
                             'Configs to measure.')
_TRAINER_FLAGS = runner.define_trainer_flags()

_LOG_TIME = re.compile(r'^I\d{4} (\d\d:\d\d:\d\d\.\d+) .*examples/s')


def _seconds_to_first_loop(log: str, start: float) -> float:
  """From `start` (unix time) to the first loop's log line."""
  for line in log.splitlines():
    match = _LOG_TIME.match(line)
    if match:
      clock = datetime.datetime.strptime(match.group(1), '%H:%M:%S.%f').time()
      day = datetime.date.fromtimestamp(start)
      logged = datetime.datetime.combine(day, clock).timestamp()
      return logged - start
  raise ValueError('no training loop line in the log')


def measure(name: str, out: str) -> dict:
  _, fit = runner.run_codelab_fit(name, os.path.join(out, f'{name}_fit.jsonl'),
                                  '--epochs=2')
  trainer_process, trainer = runner.run_trainer(
      name, os.path.join(out, f'{name}_trainer'), '--config.train.epochs=2',
      *_TRAINER_FLAGS.value)
  fit_speed, trainer_speed = (fit[-1]['examples_per_s'],
                              trainer[-1]['examples_per_s'])
  return {
      'config': name,
      'fit_examples_per_s': round(fit_speed),
      'trainer_examples_per_s': round(trainer_speed),
      'ratio': round(trainer_speed / fit_speed, 2),
      'trainer_first_loop_s': round(_seconds_to_first_loop(
          trainer_process.log, trainer_process.start), 1),
  }


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  rows = [measure(name, _OUT.value) for name in _CONFIGS.value]
  runner.print_header('config', 'codelab model.fit (examples/s)',
                      'this trainer (examples/s)', 'ratio',
                      'command to first loop end')
  for row in rows:
    runner.print_row(row['config'], f'{row["fit_examples_per_s"]:,}',
                     f'{row["trainer_examples_per_s"]:,}', f'{row["ratio"]}x',
                     f'{row["trainer_first_loop_s"]} s')
  runner.write_json(_OUT.value, 'throughput.json',
                    {'machine': runner.machine(),
                     'trainer_flags': _TRAINER_FLAGS.value, 'rows': rows})


if __name__ == '__main__':
  app.run(main)
