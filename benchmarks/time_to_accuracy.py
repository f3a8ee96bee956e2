r"""Wall time from the command to the first evaluation at a target accuracy.

  python -m benchmarks.time_to_accuracy --config=conv_bn --targets=0.99,0.995 \
      --data_dir=../shared/mnist --out=/tmp/tta

Runs the codelab recipe (benchmarks/codelab_fit.py, evaluating on the test
set after every epoch as the codelab does) and this trainer (its defaults),
each in a fresh process for the config's epochs, and reports for each target
the seconds from launching the process to the end of the first epoch whose
test accuracy reaches it ("not reached" otherwise), with the seed and the
machine. Nothing is tuned on the test set: both run the config as it is.
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
_SEED = flags.DEFINE_integer('seed', 0, 'config.seed of both runs.')


def _launch(args) -> float:
  start = time.time()
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                 capture_output=True)
  return start


def _first_reaching(records, start, target):
  for record in records:
    if record['eval_accuracy'] >= target:
      return round(record['wall_time'] - start, 1), record['epoch']
  return None, None


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  config_path = os.path.join(ROOT, 'configs', _CONFIG.value + '.py')
  fit_file = os.path.join(_OUT.value, 'fit.jsonl')
  if os.path.exists(fit_file):
    os.remove(fit_file)
  fit_start = _launch(['-m', 'benchmarks.codelab_fit', f'--config={config_path}',
                       f'--config.seed={_SEED.value}',
                       f'--data_dir={_DATA_DIR.value}', '--validate',
                       '--epochs=10', f'--out={fit_file}'])
  with open(fit_file) as f:
    fit_records = [json.loads(line) for line in f]
  workdir = os.path.join(_OUT.value, 'trainer')
  subprocess.run(['rm', '-rf', workdir], check=True)
  trainer_start = _launch(['-m', 'mnist_dist.main', f'--config={config_path}',
                           f'--workdir={workdir}', f'--config.seed={_SEED.value}',
                           f'--config.data.dir={_DATA_DIR.value}'])
  trainer_records = reporting.read_metrics(workdir)

  rows = []
  for target in map(float, _TARGETS.value):
    fit_s, fit_epoch = _first_reaching(fit_records, fit_start, target)
    ours_s, ours_epoch = _first_reaching(trainer_records, trainer_start, target)
    rows.append({'target': target, 'fit_s': fit_s, 'fit_epoch': fit_epoch,
                 'trainer_s': ours_s, 'trainer_epoch': ours_epoch})
  print(f'{_CONFIG.value}, seed {_SEED.value}, {os.cpu_count()} CPUs '
        f'({platform.processor() or platform.machine()}):')
  print('| target | codelab model.fit | this trainer |')
  print('| --- | --- | --- |')
  shown = lambda s, e: f'{s} s (epoch {e})' if s is not None else 'not reached'
  for row in rows:
    print(f'| {row["target"]:.1%} | {shown(row["fit_s"], row["fit_epoch"])} | '
          f'{shown(row["trainer_s"], row["trainer_epoch"])} |')
  with open(os.path.join(_OUT.value, 'time_to_accuracy.json'), 'w') as f:
    json.dump({'config': _CONFIG.value, 'seed': _SEED.value, 'rows': rows,
               'fit': fit_records, 'trainer': trainer_records}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
