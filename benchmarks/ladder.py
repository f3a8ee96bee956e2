r"""Trains the codelab's ladder of five configs on the real MNIST; a results table.

  python -m benchmarks.ladder --data_dir=../shared/mnist --workdir=/tmp/ladder

Each config runs in a process of its own through the real entry point, with
its own defaults (10 epochs; --trainer_flags overrides them), in a new
WORKDIR/CONFIG (an earlier run there is removed). Prints a Markdown table
(final-epoch test accuracy, best epoch, training time as metrics.jsonl's
elapsed_s, the process's wall time, training examples/s) and writes it with
the raw records to WORKDIR/ladder.json.
"""

import os

from absl import app
from absl import flags

from benchmarks import runner
from mnist_dist import reporting

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ladder',
                               'One subfolder per config goes here.')
_CONFIGS = flags.DEFINE_list('configs', list(runner.LADDER), 'Configs to run.')
_SEED = flags.DEFINE_integer('seed', 0, 'config.seed of every run.')
_TRAINER_FLAGS = runner.define_trainer_flags()


def main(argv):
  del argv
  rows = []
  for name in _CONFIGS.value:
    process, records = runner.run_trainer(
        name, os.path.join(_WORKDIR.value, name), f'--config.seed={_SEED.value}',
        *_TRAINER_FLAGS.value, show_log=True)
    rows.append({
        'config': name,
        'final_accuracy': records[-1]['eval_accuracy'],
        'best_accuracy': max(r['eval_accuracy'] for r in records),
        'epochs': records[-1]['epoch'],
        'train_s': records[-1]['elapsed_s'],
        'wall_s': round(process.wall_s, 1),
        'examples_per_s': round(sum(r['examples_per_s'] for r in records) /
                                len(records)),
        'records': records,
    })
  runner.print_header('config', 'test accuracy (final epoch)', 'best epoch',
                      'training', 'process wall time', 'examples/s')
  for row in rows:
    runner.print_row(row['config'], f'{row["final_accuracy"]:.2%}',
                     f'{row["best_accuracy"]:.2%}',
                     reporting.format_duration(row['train_s']),
                     reporting.format_duration(row['wall_s']),
                     f'{row["examples_per_s"]:,}')
  runner.write_json(_WORKDIR.value, 'ladder.json',
                    {'seed': _SEED.value, 'runs': rows})


if __name__ == '__main__':
  app.run(main)
