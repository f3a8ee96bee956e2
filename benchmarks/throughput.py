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
import json
import os
import platform
import re
import subprocess
import sys
import time

from absl import app
from absl import flags

from mnist_dist import reporting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('dense_softmax', 'dense', 'dense_dropout', 'conv', 'conv_bn')

_DATA_DIR = flags.DEFINE_string('data_dir', '../shared/mnist',
                                'Folder with the four MNIST IDX files.')
_OUT = flags.DEFINE_string('out', '/tmp/throughput', 'Output folder.')
_CONFIGS = flags.DEFINE_list('configs', list(CONFIGS), 'Configs to measure.')
_TRAINER_FLAGS = flags.DEFINE_list(
    'trainer_flags', [], 'Extra --config.x=y flags for this trainer, to '
    'measure a lever (e.g. --trainer_flags=--config.train.precision=float32).')

_LOG_TIME = re.compile(r'^I\d{4} (\d\d:\d\d:\d\d\.\d+) .*examples/s')


def _config_path(name):
  return os.path.join(ROOT, 'configs', name + '.py')


def _run(args):
  process = subprocess.run([sys.executable, *args], cwd=ROOT,
                           capture_output=True, text=True, check=False)
  if process.returncode:
    raise RuntimeError(f'{args} failed:\n{process.stderr[-3000:]}')
  return process.stderr


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
  fit_file = os.path.join(out, f'{name}_fit.jsonl')
  if os.path.exists(fit_file):
    os.remove(fit_file)
  _run(['-m', 'benchmarks.codelab_fit', f'--config={_config_path(name)}',
        f'--data_dir={_DATA_DIR.value}', '--epochs=2', f'--out={fit_file}'])
  with open(fit_file) as f:
    fit = [json.loads(line) for line in f][-1]

  workdir = os.path.join(out, f'{name}_trainer')
  subprocess.run(['rm', '-rf', workdir], check=True)
  start = time.time()
  log = _run(['-m', 'mnist_dist.main', f'--config={_config_path(name)}',
              f'--workdir={workdir}', f'--config.data.dir={_DATA_DIR.value}',
              '--config.train.epochs=2', *_TRAINER_FLAGS.value])
  trainer = reporting.read_metrics(workdir)[-1]
  return {
      'config': name,
      'fit_examples_per_s': round(fit['examples_per_s']),
      'trainer_examples_per_s': round(trainer['examples_per_s']),
      'ratio': round(trainer['examples_per_s'] / fit['examples_per_s'], 2),
      'trainer_first_loop_s': round(_seconds_to_first_loop(log, start), 1),
  }


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  rows = [measure(name, _OUT.value) for name in _CONFIGS.value]
  print('| config | codelab model.fit (examples/s) | this trainer '
        '(examples/s) | ratio | command to first loop end |')
  print('| --- | --- | --- | --- | --- |')
  for row in rows:
    print(f'| {row["config"]} | {row["fit_examples_per_s"]:,} | '
          f'{row["trainer_examples_per_s"]:,} | {row["ratio"]}x | '
          f'{row["trainer_first_loop_s"]} s |')
  with open(os.path.join(_OUT.value, 'throughput.json'), 'w') as f:
    json.dump({'machine': {'cpus': os.cpu_count(),
                           'processor': platform.processor(),
                           'python': platform.python_version()},
               'trainer_flags': _TRAINER_FLAGS.value, 'rows': rows}, f,
              indent=1)


if __name__ == '__main__':
  app.run(main)
