"""Killed anywhere, resumed exactly.

A short run is killed with SIGKILL at a point of its life after set-up
(training, checkpoint writes, evaluations, the export, the plots), then
started again, as often as it takes, with the same command. Every chain must
end with exit 0, a complete workdir and the final weights and metrics of a
run that was never killed. The quick suite tries a few points; the slow one
twenty.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT
from helpers import finished_state

# 32 steps an epoch, a checkpoint every 4 steps, every output on.
_RUN = ('--config=configs/dense_dropout.py', '--config.data.source=synthetic',
        '--config.data.synthetic_train_examples=4096',
        '--config.data.synthetic_eval_examples=1000',
        '--config.train.epochs=2', '--config.train.steps_per_loop=2',
        '--config.checkpoint.every_steps=4')
_MAX_RESTARTS = 4


def _start(workdir):
  return subprocess.Popen(
      [sys.executable, '-m', 'mnist_dist.main', f'--workdir={workdir}', *_RUN],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """(workdir, {phase: (start s, end s)}) of a run nothing stopped.

  The phases, in seconds from the start, as its log shows them: 'train' from
  the run's summary line (set-up done) to its last checkpoint, 'export' from
  there to the export's line, 'plots' from there to the exit.
  """
  workdir = tmp_path_factory.mktemp('uninterrupted')
  start = time.monotonic()
  process = _start(workdir)
  seen = {}
  for line in process.stderr:
    for event, sign in (('set_up', ' steps per epoch '),
                        ('trained', 'Saved checkpoint'),
                        ('exported', 'Exported the model')):
      if sign in line:
        seen[event] = time.monotonic() - start
  process.wait(timeout=300)
  assert process.returncode == 0 and len(seen) == 3, seen
  end = time.monotonic() - start
  return workdir, {'train': (seen['set_up'], seen['trained']),
                   'export': (seen['trained'], seen['exported']),
                   'plots': (seen['exported'], end)}


def _last_line(log: str) -> str:
  lines = log.strip().splitlines()
  return lines[-1] if lines else '(nothing yet)'


def _kill_and_finish(workdir, kill_after_s):
  """Kills the first start after kill_after_s, then restarts to the end.

  Returns the exit codes of the restarts. Prints where the kill struck and
  what the first restart did (`pytest -s` shows it).
  """
  first = _start(workdir)
  try:
    first.wait(timeout=kill_after_s)
  except subprocess.TimeoutExpired:
    first.kill()
  killed_at = _last_line(first.communicate()[1])
  codes = []
  while not codes or codes[-1] != 0:
    assert len(codes) < _MAX_RESTARTS, codes
    process = _start(workdir)
    log = process.communicate(timeout=300)[1]
    if not codes:
      resumed = [line for line in log.splitlines()
                 if 'Resuming from' in line or 'Taking over' in line]
      print(f'\nkilled after {kill_after_s:.1f} s, after: {killed_at}\n'
            f'  restart: {" | ".join(resumed) or "started afresh"}; '
            f'last: {_last_line(log)}')
    codes.append(process.returncode)
    assert 'Traceback' not in log, log[-3000:]
  return codes


def _check_kill_at(phase, fraction, workdir, uninterrupted):
  """Kills at `fraction` of the way through `phase` of the uninterrupted run."""
  reference, phases = uninterrupted
  start, end = phases[phase]
  codes = _kill_and_finish(workdir,
                           kill_after_s=start + fraction * (end - start))
  assert codes == [0]  # One restart finishes whatever the kill left.
  assert sorted(os.listdir(workdir)) == [
      'checkpoints', 'config.json', 'export', 'metrics.jsonl', 'plots',
      'tensorboard']  # Complete, with no lock and no temporary left over.
  assert len(os.listdir(os.path.join(workdir, 'plots'))) == 5
  records, weights = finished_state(workdir)
  reference_records, reference_weights = finished_state(reference)
  assert [r['epoch'] for r in records] == [1, 2]
  for record, expected in zip(records, reference_records, strict=True):
    assert record.keys() == expected.keys()
    for key, value in expected.items():
      # Equal but for the float rounding of an epoch's sums added up in
      # other loop-sized pieces.
      assert record[key] == pytest.approx(value, rel=1e-6), key
  assert weights.keys() == reference_weights.keys() and weights
  for name, value in reference_weights.items():
    np.testing.assert_array_equal(weights[name], value, err_msg=name)


@pytest.mark.slow  # Three kills and restarts of a real run: about a minute.
@pytest.mark.parametrize('phase, fraction', [
    ('train', 0.5), ('export', 0.5), ('plots', 0.5)])
def test_killed_at_a_few_points_resumes_exactly(tmp_path, uninterrupted,
                                                phase, fraction):
  _check_kill_at(phase, fraction, tmp_path, uninterrupted)


# Twelve points in training (checkpoints and evaluations among them), four
# in the export, four in the plots.
@pytest.mark.slow
@pytest.mark.parametrize('phase, fraction', [
    *(('train', (i + 0.5) / 12) for i in range(12)),
    *(('export', (i + 0.5) / 4) for i in range(4)),
    *(('plots', (i + 0.5) / 4) for i in range(4))])
def test_killed_anywhere_resumes_exactly(tmp_path, uninterrupted, phase,
                                         fraction):
  _check_kill_at(phase, fraction, tmp_path, uninterrupted)
