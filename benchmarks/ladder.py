r"""Trains the codelab's ladder of five configs on the real MNIST; a results table.

  python -m benchmarks.ladder --data_dir=../shared/mnist --workdir=/tmp/ladder

Each config runs in a process of its own through the real entry point, with
its own defaults (10 epochs). Prints a Markdown table (final-epoch test
accuracy, best epoch, training time as metrics.jsonl's elapsed_s, the process's
wall time, training examples/s) and writes it with the raw records to
WORKDIR/ladder.json.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from mnist_dist import reporting

CONFIGS = ('dense_softmax', 'dense', 'dense_dropout', 'conv', 'conv_bn')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DATA_DIR = flags.DEFINE_string('data_dir', '../shared/mnist',
                                'Folder with the four MNIST IDX files.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ladder',
                               'One subfolder per config goes here.')
_CONFIGS = flags.DEFINE_list('configs', list(CONFIGS), 'Configs to run.')
_SEED = flags.DEFINE_integer('seed', 0, 'config.seed of every run.')


def main(argv):
  del argv
  rows = []
  for name in _CONFIGS.value:
    workdir = os.path.join(_WORKDIR.value, name)
    start = time.time()
    subprocess.run(
        [sys.executable, '-m', 'mnist_dist.main',
         f'--config={os.path.join(ROOT, "configs", name + ".py")}',
         f'--workdir={workdir}', f'--config.data.dir={_DATA_DIR.value}',
         f'--config.seed={_SEED.value}'], check=True, cwd=ROOT)
    wall_s = time.time() - start
    records = reporting.read_metrics(workdir)
    rows.append({
        'config': name,
        'final_accuracy': records[-1]['eval_accuracy'],
        'best_accuracy': max(r['eval_accuracy'] for r in records),
        'epochs': records[-1]['epoch'],
        'train_s': records[-1]['elapsed_s'],
        'wall_s': round(wall_s, 1),
        'examples_per_s': round(sum(r['examples_per_s'] for r in records) /
                                len(records)),
        'records': records,
    })
  print('| config | test accuracy (final epoch) | best epoch | training | '
        'process wall time | examples/s |')
  print('| --- | --- | --- | --- | --- | --- |')
  for row in rows:
    print(f'| {row["config"]} | {row["final_accuracy"]:.2%} | '
          f'{row["best_accuracy"]:.2%} | '
          f'{reporting.format_duration(row["train_s"])} | '
          f'{reporting.format_duration(row["wall_s"])} | '
          f'{row["examples_per_s"]:,} |')
  with open(os.path.join(_WORKDIR.value, 'ladder.json'), 'w') as f:
    json.dump({'seed': _SEED.value, 'runs': rows}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
