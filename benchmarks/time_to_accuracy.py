r"""Wall time from the command to the first evaluation at a target accuracy.

  python -m benchmarks.time_to_accuracy --config=conv_bn --targets=0.99,0.995 \
      --data_dir=../shared/mnist --out=/tmp/tta

  python -m benchmarks.time_to_accuracy --config=fast --targets=0.99 \
      --nofit --seeds=0,1,2

Runs the codelab recipe (benchmarks/codelab_fit.py, evaluating on the test
set after every epoch as the codelab does; --nofit skips it) and this trainer
(the config as it is), each in a fresh process for the config's epochs, and
reports for each target the seconds from launching the process to the end of
the first epoch whose test accuracy reaches it ("not reached" otherwise),
with the seed and the machine. A config with data.validation_split looks at
the test set once, at the end: its time is to the end of that evaluation,
and it counts only if that accuracy reaches the target. Also reported: the
trainer's start-up, from launching the process to the start of
`train_and_evaluate` (imports, flag parsing). Nothing is tuned on the test
set: both run the config as it is.
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

from mnist_dist import reporting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string('config', 'conv_bn', 'A config name of configs/.')
_TARGETS = flags.DEFINE_list('targets', ['0.99', '0.995'],
                             'Test accuracies to time.')
_DATA_DIR = flags.DEFINE_string('data_dir', '../shared/mnist',
                                'Folder with the four MNIST IDX files.')
_OUT = flags.DEFINE_string('out', '/tmp/time_to_accuracy', 'Output folder.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.seed of the runs; each '
                           'seed is one run of each.')
_FIT = flags.DEFINE_bool('fit', True, 'Also time the codelab recipe.')


def _launch(args) -> float:
  start = time.time()
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                 capture_output=True)
  return start


def _first_reaching(records, start, target):
  """(seconds from start, epoch) of the first record at target, or Nones."""
  if records and 'test_accuracy' in records[-1]:
    # Validated on a split: the test set was evaluated once, at the end.
    last = records[-1]
    if last['test_accuracy'] >= target:
      return round(last['wall_time'] - start, 1), last['epoch']
    return None, None
  for record in records:
    if record['eval_accuracy'] >= target:
      return round(record['wall_time'] - start, 1), record['epoch']
  return None, None


def _fit_run(config_path, seed):
  fit_file = os.path.join(_OUT.value, f'fit_{seed}.jsonl')
  if os.path.exists(fit_file):
    os.remove(fit_file)
  start = _launch(['-m', 'benchmarks.codelab_fit', f'--config={config_path}',
                   f'--config.seed={seed}', f'--data_dir={_DATA_DIR.value}',
                   '--validate', f'--out={fit_file}'])
  with open(fit_file) as f:
    return start, [json.loads(line) for line in f]


def _trainer_run(config_path, seed):
  workdir = os.path.join(_OUT.value, f'trainer_{seed}')
  subprocess.run(['rm', '-rf', workdir], check=True)
  start = _launch(['-m', 'mnist_dist.main', f'--config={config_path}',
                   f'--workdir={workdir}', f'--config.seed={seed}',
                   f'--config.data.dir={_DATA_DIR.value}'])
  return start, reporting.read_metrics(workdir)


def _shown(seconds, epoch):
  return f'{seconds} s (epoch {epoch})' if seconds is not None else 'not reached'


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  config_path = os.path.join(ROOT, 'configs', _CONFIG.value + '.py')
  print(f'{_CONFIG.value}, {os.cpu_count()} CPUs '
        f'({platform.processor() or platform.machine()}):')
  print('| seed | target | codelab model.fit | this trainer | trainer '
        'start-up | trainer test accuracy |')
  print('| --- | --- | --- | --- | --- | --- |')
  results = []
  for seed in map(int, _SEEDS.value):
    fit_start, fit_records = _fit_run(config_path, seed) if _FIT.value else (
        None, [])
    trainer_start, trainer_records = _trainer_run(config_path, seed)
    first = trainer_records[0]
    startup_s = round(first['wall_time'] - first['elapsed_s'] - trainer_start,
                      1)
    last = trainer_records[-1]
    accuracy = last.get('test_accuracy', last['eval_accuracy'])
    for target in map(float, _TARGETS.value):
      row = {'seed': seed, 'target': target, 'trainer_startup_s': startup_s,
             'trainer_test_accuracy': accuracy}
      row['fit_s'], row['fit_epoch'] = _first_reaching(fit_records, fit_start,
                                                       target)
      row['trainer_s'], row['trainer_epoch'] = _first_reaching(
          trainer_records, trainer_start, target)
      results.append(row)
      fit = _shown(row['fit_s'], row['fit_epoch']) if _FIT.value else '-'
      print(f'| {seed} | {target:.1%} | {fit} | '
            f'{_shown(row["trainer_s"], row["trainer_epoch"])} | '
            f'{startup_s} s | {accuracy:.2%} |', flush=True)
    with open(os.path.join(_OUT.value, 'time_to_accuracy.json'), 'w') as f:
      json.dump({'config': _CONFIG.value, 'rows': results}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
