r"""How long training waits for its checkpoints, written synchronously or in
the background, to a local disk and to a slow store.

  python -m benchmarks.checkpoint_stalls --data_dir=../shared/mnist \
      --out=/tmp/checkpoint_stalls

Each case is a fresh run of the trainer on the real MNIST, through
benchmarks/slow_store.py: `python -m mnist_dist.main` with every checkpoint
write --slow_store_s longer on the slow store, as is on the local disk.
Each runs with checkpoint.async_save off (the synchronous saves TensorFlow
makes by default), then on:

  conv_bn   the default config, 2 epochs in loops of 100 steps: a
            checkpoint at the first loop end past each 500 steps (500, 1037,
            1537) and at each epoch's end (937, 1874), 5 saves
  dense     1 epoch (468 steps of batch 128) in loops of 25 steps, a
            checkpoint every 25 steps and at the end: frequent saves, 19

From each save's log line (`Saved checkpoint ... (written in W s, training
waited T s)`) comes how long the training thread waited for it (T) and how
long its write took (W); the end of a run waits for the last write in
flight, counted in the run's wall time (from the launch to the exit, the
set-up, the export and the plots included). The conv_bn rows also give the
second epoch's time, from the first epoch's record in metrics.jsonl to the
second's (its training, its two checkpoints and its evaluation). Prints a
Markdown table and writes it with the raw numbers to
OUT/checkpoint_stalls.json.
"""

import os
import re
import shutil
import statistics

from absl import app
from absl import flags

from benchmarks import runner
from mnist_dist import reporting

_OUT = flags.DEFINE_string('out', '/tmp/checkpoint_stalls',
                           'Folder for the workdirs and the JSON.')
_SLOW_STORE_S = flags.DEFINE_float(
    'slow_store_s', 2.0, 'How much longer each write takes on the slow '
    'store: e.g. 2 s, a 4 MB checkpoint over a few MB/s with latency.')
_CASES = flags.DEFINE_list('cases', ['conv_bn', 'dense'],
                           'Which of the cases above to run.')

_CASE_FLAGS = {
    'conv_bn': ('--config.train.epochs=2',),
    'dense': ('--config.train.epochs=1', '--config.train.steps_per_loop=25',
              '--config.checkpoint.every_steps=25'),
}
_SAVED = re.compile(r'Saved checkpoint \S+ \(written in ([\d.]+) s, '
                    r'training waited ([\d.]+) s\)')


def run_case(config: str, store: str, async_save: bool) -> dict:
  """One run of the trainer; what its saves cost it."""
  workdir = os.path.join(_OUT.value, f'{config}-{store}-{async_save}')
  slow_s = _SLOW_STORE_S.value if store == 'slow' else 0
  shutil.rmtree(workdir, ignore_errors=True)
  process = runner.run_python(
      '-m', 'benchmarks.slow_store', f'--config={runner.config_path(config)}',
      f'--workdir={workdir}', f'--config.data.dir={runner.DATA_DIR.value}',
      *_CASE_FLAGS[config], f'--config.checkpoint.async_save={async_save}',
      env={'SLOW_STORE_S': str(slow_s)})
  saves = [(float(written), float(waited))
           for written, waited in _SAVED.findall(process.log)]
  records = reporting.read_metrics(workdir)
  return {
      'config': config, 'store': store, 'async_save': async_save,
      'saves': len(saves),
      'waited_s': [waited for _, waited in saves],
      'written_s': [written for written, _ in saves],
      'run_s': round(process.wall_s, 1),
      'epoch_2_s': (round(records[1]['elapsed_s'] - records[0]['elapsed_s'], 1)
                    if len(records) > 1 else None),
  }


def _mean_max(values: list[float]) -> str:
  return f'{statistics.mean(values):.3f} / {max(values):.3f}'


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  print(f'Measured on {runner.describe_machine()}; slow store: each write '
        f'{_SLOW_STORE_S.value:g} s longer.\n')
  runner.print_header('config', 'store', 'saves', 'async_save',
                      'training waited per save, mean / max (s)',
                      'write per save, mean (s)', 'epoch 2 (s)', 'run (s)')
  rows = []
  for config in _CASES.value:
    for store in ('local', 'slow'):
      for async_save in (False, True):
        row = run_case(config, store, async_save)
        rows.append(row)
        runner.print_row(
            config, store, row['saves'], 'on' if async_save else 'off',
            _mean_max(row['waited_s']),
            f'{statistics.mean(row["written_s"]):.3f}',
            row['epoch_2_s'] or '', row['run_s'])
  runner.write_json(_OUT.value, 'checkpoint_stalls.json', {
      'machine': runner.machine(), 'slow_store_s': _SLOW_STORE_S.value,
      'rows': rows})


if __name__ == '__main__':
  app.run(main)
