"""Killed anywhere, resumed exactly.

A short run is killed with SIGKILL at a point of its life after set-up
(training, checkpoint writes, evaluations, the export, the plots), then
started again, as often as it takes, with the same command. Each kill must
land while the run is still going (SIGKILL, not a run that ended first), the
first restart must continue from the newest checkpoint the kill left (or
start afresh if there is none), and every chain must end with exit 0, a
complete workdir and the final weights and metrics of a run that was never
killed. Both tests start and kill trainer processes, so both are slow (the
quick suite leaves kills out): `test_killed_at_a_few_points_resumes_exactly`
tries one point in each phase, `test_killed_anywhere_resumes_exactly` twenty.
"""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import finished_state
from helpers import start_main

# 32 steps an epoch, a checkpoint every 4 steps, every output on.
_RUN = ('--config=configs/dense_dropout.py', '--config.data.source=synthetic',
        '--config.data.synthetic_train_examples=4096',
        '--config.data.synthetic_eval_examples=1000',
        '--config.train.epochs=2', '--config.train.steps_per_loop=2',
        '--config.checkpoint.every_steps=4')
_STEPS = 64
_MAX_RESTARTS = 4
# The phases of a run, each from the log line that begins it to the next
# one: set-up done (the run's summary line), training done (its last
# checkpoint), the export written, the plots written.
_PHASES = ('train', 'export', 'plots')
_MARKS = (' steps per epoch ', f'checkpoints/ckpt-{_STEPS}',
          'Exported the model', 'Wrote 5 plots')


def _start(workdir):
  return start_main(f'--workdir={workdir}', *_RUN, stdout=subprocess.DEVNULL)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """(workdir, {phase: seconds}) of a run nothing stopped: how long each
  phase took, from its mark in the log to the next."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  process = _start(workdir)
  seen = {}
  for line in process.stderr:
    seen.update((mark, time.monotonic()) for mark in _MARKS if mark in line)
  process.wait(timeout=300)
  assert process.returncode == 0 and len(seen) == len(_MARKS), seen
  return workdir, {phase: seen[end] - seen[start] for phase, start, end
                   in zip(_PHASES, _MARKS, _MARKS[1:])}


def _last_line(log: str) -> str:
  lines = log.strip().splitlines()
  return lines[-1] if lines else '(nothing yet)'


def _kill_and_finish(workdir, phase, after_s):
  """Kills the first start after_s into `phase` (timed from the phase's mark
  in its own log, so that its start-up time does not move the point), then
  restarts to the end.

  Returns the exit codes of the restarts. Prints where the kill struck and
  what the first restart did (`pytest -s` shows it).
  """
  first = _start(workdir)
  log = ''
  for line in first.stderr:
    log += line
    if _MARKS[_PHASES.index(phase)] in line:
      break
  try:
    first.wait(timeout=after_s)
  except subprocess.TimeoutExpired:
    first.kill()
  killed_at = _last_line(log + first.communicate()[1])
  # A run that ended before the kill would prove nothing about kills.
  assert first.returncode == -signal.SIGKILL, (
      f'not killed: exit {first.returncode} before {after_s:.1f} s into '
      f'{phase}, after: {killed_at}')
  left = tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))
  codes = []
  while not codes or codes[-1] != 0:
    assert len(codes) < _MAX_RESTARTS, codes
    process = _start(workdir)
    log = process.communicate(timeout=300)[1]
    if not codes:
      resumed = [line for line in log.splitlines()
                 if 'Resuming from' in line or 'Taking over' in line]
      print(f'\nkilled {after_s:.1f} s into {phase}, after: {killed_at}\n'
            f'  restart: {" | ".join(resumed) or "started afresh"}; '
            f'last: {_last_line(log)}')
      # It continued from what the kill left, not from earlier or afresh.
      if left:
        step = int(left.rsplit('-', 1)[1])
        assert f'Resuming from {left} at step {step} ' in log, log[-3000:]
      else:
        assert 'Resuming from' not in log, log[-3000:]
    codes.append(process.returncode)
    assert 'Traceback' not in log, log[-3000:]
  return codes


def _check_kill_at(phase, fraction, workdir, uninterrupted):
  """Kills at `fraction` of the way through `phase` of the uninterrupted run."""
  reference, durations = uninterrupted
  codes = _kill_and_finish(workdir, phase,
                           after_s=fraction * durations[phase])
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
    # Not the plots' last fifth: the run exits as they end, and plots a
    # little faster than the reference run's would end before the kill.
    *(('plots', (i + 0.5) / 5) for i in range(4))])
def test_killed_anywhere_resumes_exactly(tmp_path, uninterrupted, phase,
                                         fraction):
  _check_kill_at(phase, fraction, tmp_path, uninterrupted)
