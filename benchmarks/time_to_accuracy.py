r"""Time to accuracy, the MLPerf way: from launching the process to the end of
the evaluation that first reaches the target, over several seeds.

  python -m benchmarks.time_to_accuracy --config=fast --target=0.99 \
      --data_dir=../shared/mnist --out=/tmp/tta_fast

  python -m benchmarks.time_to_accuracy --config=conv_bn --target=0.99 --fit

  python -m benchmarks.time_to_accuracy --config=fast --target=0.99 --peer

Runs this trainer (the config as it is, `python -m mnist_dist.main`) once
per seed in --seeds (default: five seeds no recipe here was tuned on), each
in a fresh process, and times each run:

- validation accuracy: the last evaluation's, for a config validated on a
  split (what a recipe is chosen on).
- to target: from the launch to the end of the first evaluation at or above
  the target. A config with data.validation_split (a recipe chosen on that
  split) looks at the test set once, at the end: its time is to the end of
  that test evaluation, and it counts only if that accuracy reaches the
  target. A config without one evaluates the test set after every epoch (the
  codelab's way) and the first epoch at the target stops the clock.
- MLPerf clock: MLPerf's own, from the first touch of the data to the end of
  the same evaluation; the start-up (and what a run builds before it reads
  the data) is initialisation, outside it.
- start-up: from the launch to the start of building the run (imports, flags).
- first loop: from the launch to the end of the first training loop
  (start-up, loading, building, tracing and the loop's steps; read from the
  run's TensorBoard events, so '-' with outputs.tensorboard off).
- last evaluation: from the launch to the end of the run's last evaluation
  (where a missed target stands).
- exit: from the launch to the end of the process (export and plots too).

The result is MLPerf's (benchmarks/mlperf.py): a run that misses the target
fails the whole measurement; of the runs' times to target the fastest and
the slowest are dropped (with 5 runs or more) and the mean of the others is
the result, with their spread (max - min), on each clock; the median of all
the runs too. Prints a table of the runs and the results, and writes them to
OUT/time_to_accuracy.json.

--fit also times the codelab recipe (benchmarks/codelab_fit.py, evaluating
the test set after every epoch as the codelab does) per seed, summarised
the same way (from launch only). --peer also times the GPU record recipe,
the peer to beat (benchmarks/record_recipe.py, PyTorch: the `benchmark`
extra), on both clocks.
"""

import json
import os
import statistics

from absl import app
from absl import flags

from benchmarks import clocks
from benchmarks import mlperf
from benchmarks import runner
from mnist_dist.base import workdir as workdir_lib

_CONFIG = flags.DEFINE_string('config', 'fast', 'A config name of configs/, '
                              'or a config file\'s path.')
_TARGET = flags.DEFINE_float('target', 0.99, 'Test accuracy to reach.')
_OUT = flags.DEFINE_string('out', '/tmp/time_to_accuracy', 'Output folder.')
_SEEDS = flags.DEFINE_list('seeds', ['101', '102', '103', '104', '105'],
                           'config.seed of the runs, one run each.')
_FIT = flags.DEFINE_bool('fit', False, 'Also time the codelab recipe.')
_PEER = flags.DEFINE_bool('peer', False, 'Also time the GPU record recipe '
                          '(benchmarks/record_recipe.py; needs PyTorch).')
_TRAINER_FLAGS = runner.define_trainer_flags()


def _metrics_written(workdir: str) -> float:
  """Unix time of metrics.jsonl's last write.

  The trainer writes an evaluation's record right after it, test evaluation
  included (the record's own wall_time is stamped before the test set is
  evaluated), so this is when the final evaluation ended.
  """
  return os.path.getmtime(workdir_lib.path(workdir, workdir_lib.METRICS))


def time_trainer_run(seed: int) -> dict:
  """One run of the trainer: its times from launch and its accuracy."""
  workdir = os.path.join(_OUT.value, f'trainer_{seed}')
  process, records = runner.run_trainer(_CONFIG.value, workdir,
                                        f'--config.seed={seed}',
                                        *_TRAINER_FLAGS.value)
  return clocks.trainer_row(records, seed=seed, launch=process.start,
                            exit_s=process.wall_s,
                            loop_ends=runner.loop_end_times(workdir),
                            metrics_written=_metrics_written(workdir),
                            target=_TARGET.value)


def time_peer_run(seed: int) -> dict:
  """One run of benchmarks/record_recipe.py (PyTorch) in a fresh process."""
  out = os.path.join(_OUT.value, f'record_{seed}.json')
  process = runner.run_python('-m', 'benchmarks.record_recipe',
                              f'--data_dir={runner.DATA_DIR.value}',
                              f'--seed={seed}', f'--out={out}')
  with open(out) as f:
    return clocks.peer_row(json.load(f), launch=process.start,
                           exit_s=process.wall_s, target=_TARGET.value)


def time_fit_run(seed: int) -> dict:
  """One run of the codelab recipe, evaluated on the test set every epoch."""
  process, records = runner.run_codelab_fit(
      _CONFIG.value, os.path.join(_OUT.value, f'fit_{seed}.jsonl'),
      '--validate', f'--config.seed={seed}')
  reaching = [r for r in records if r['eval_accuracy'] >= _TARGET.value]
  return {'seed': seed, 'exit_s': process.wall_s,
          'accuracy': max(r['eval_accuracy'] for r in records),
          'reached_s': reaching[0]['wall_time'] - process.start
                       if reaching else None,
          'mlperf_s': None, 'epoch': reaching[0]['epoch'] if reaching else None}


def _seconds(value: float | None) -> str:
  return '-' if value is None else f'{value:.1f} s'


def _reached(row: dict) -> str:
  if row['reached_s'] is None:
    return 'missed'
  return f'{_seconds(row["reached_s"])} ({row["epoch"]})'


def _print_run(name: str, row: dict) -> None:
  validation = row.get('validation_accuracy')
  runner.print_row(name, row['seed'],
                   '-' if validation is None else f'{validation:.2%}',
                   f'{row["accuracy"]:.2%}', _reached(row),
                   _seconds(row['mlperf_s']), _seconds(row.get('startup_s')),
                   _seconds(row.get('first_loop_s')),
                   _seconds(row.get('last_eval_s')), _seconds(row['exit_s']))


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  seeds = [int(seed) for seed in _SEEDS.value]
  machine = runner.machine()
  print(f'{_CONFIG.value} to {_TARGET.value:.1%} test accuracy on '
        f'{runner.describe_machine()}; seconds from launching the process '
        '(MLPerf clock: from the first touch of the data):')
  runner.print_header('run', 'seed', 'validation accuracy', 'test accuracy',
                      'to target (epoch)', 'MLPerf clock', 'start-up',
                      'first loop end', 'last evaluation', 'exit')
  timed = {name: time_run for name, enabled, time_run in (
      ('trainer', True, time_trainer_run),
      ('record recipe', _PEER.value, time_peer_run),
      ('model.fit', _FIT.value, time_fit_run)) if enabled}
  runs = {name: [] for name in timed}
  for seed in seeds:  # Each seed's runs one after the other: the same load.
    for name, time_run in timed.items():
      runs[name].append(time_run(seed))
      _print_run(name, runs[name][-1])
  results = {name: clocks.summarize(rows) for name, rows in runs.items()}
  print()
  runner.print_header('run', f'time to {_TARGET.value:.1%} from launch',
                      'MLPerf clock', 'exit (mean)')
  for name, rows in runs.items():
    runner.print_row(
        name, mlperf.describe(results[name]['launch'], runs=len(rows)),
        mlperf.describe(results[name]['mlperf'], runs=len(rows))
        if 'mlperf' in results[name] else '-',
        _seconds(statistics.mean(r['exit_s'] for r in rows)))
  runner.write_json(_OUT.value, 'time_to_accuracy.json',
                    {'config': _CONFIG.value, 'target': _TARGET.value,
                     'trainer_flags': _TRAINER_FLAGS.value,
                     'machine': machine, 'results': results,
                     'trainer_runs': runs['trainer'],
                     'peer_runs': runs.get('record recipe', []),
                     'fit_runs': runs.get('model.fit', [])})


if __name__ == '__main__':
  app.run(main)
