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

import os

from absl import app
from absl import flags

from benchmarks import runner

_CONFIG = flags.DEFINE_string('config', 'conv_bn', 'A config name of configs/.')
_TARGETS = flags.DEFINE_list('targets', ['0.99', '0.995'],
                             'Test accuracies to time.')
_OUT = flags.DEFINE_string('out', '/tmp/time_to_accuracy', 'Output folder.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'config.seed of the runs; each '
                           'seed is one run of each.')
_FIT = flags.DEFINE_bool('fit', True, 'Also time the codelab recipe.')


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


def _fit_run(seed):
  """(launch time, records) of the codelab recipe, or (None, []) with --nofit."""
  if not _FIT.value:
    return None, []
  process, records = runner.run_codelab_fit(
      _CONFIG.value, os.path.join(_OUT.value, f'fit_{seed}.jsonl'),
      '--validate', f'--config.seed={seed}')
  return process.start, records


def _shown(seconds, epoch):
  return f'{seconds} s (epoch {epoch})' if seconds is not None else 'not reached'


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  machine = runner.machine()
  print(f'{_CONFIG.value}, {machine["cpus"]} CPUs ({machine["processor"]}):')
  runner.print_header('seed', 'target', 'codelab model.fit', 'this trainer',
                      'trainer start-up', 'trainer test accuracy')
  results = []
  for seed in map(int, _SEEDS.value):
    fit_start, fit_records = _fit_run(seed)
    trainer, trainer_records = runner.run_trainer(
        _CONFIG.value, os.path.join(_OUT.value, f'trainer_{seed}'),
        f'--config.seed={seed}')
    first = trainer_records[0]
    startup_s = round(first['wall_time'] - first['elapsed_s'] - trainer.start,
                      1)
    last = trainer_records[-1]
    accuracy = last.get('test_accuracy', last['eval_accuracy'])
    for target in map(float, _TARGETS.value):
      row = {'seed': seed, 'target': target, 'trainer_startup_s': startup_s,
             'trainer_test_accuracy': accuracy}
      row['fit_s'], row['fit_epoch'] = _first_reaching(fit_records, fit_start,
                                                       target)
      row['trainer_s'], row['trainer_epoch'] = _first_reaching(
          trainer_records, trainer.start, target)
      results.append(row)
      fit = _shown(row['fit_s'], row['fit_epoch']) if _FIT.value else '-'
      runner.print_row(seed, f'{target:.1%}', fit,
                       _shown(row['trainer_s'], row['trainer_epoch']),
                       f'{startup_s} s', f'{accuracy:.2%}')
    runner.write_json(_OUT.value, 'time_to_accuracy.json',
                      {'config': _CONFIG.value, 'rows': results})


if __name__ == '__main__':
  app.run(main)
