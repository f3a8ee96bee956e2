"""A signal at any moment, from launch to exit: one line, exit 75, and the
next start continues (mnist_dist/base/stops.py, distribution/interrupts.py).

Inside the training loops a signal is a request to save, then stop
(test_resume.py); these are the moments around them: loading, starting,
the end of training, making the outputs.
"""

import os
import signal
import sys
import time
import weakref

import pytest

from helpers import small_config
from helpers import start_main
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.base import stops
from mnist_dist.outputs import actions
from mnist_dist.outputs import export

_RUN_FLAGS = ('--config=dense', '--config.data.source=synthetic',
              '--config.data.synthetic_train_examples=2048',
              '--config.data.synthetic_eval_examples=1000',
              '--config.train.epochs=2', '--config.outputs.tensorboard=False')
_OUTPUTS = ('config.json', 'checkpoints', 'metrics.jsonl', 'export', 'plots')


@pytest.fixture
def command_stops(monkeypatch):
  """stops.stop_on_signals in this process, as a command installs it; put
  back afterwards."""
  monkeypatch.setattr(stops, '_stopping', [])
  monkeypatch.setattr(sys, 'excepthook', sys.excepthook)
  monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)
  handlers = {signum: signal.getsignal(signum) for signum in stops.SIGNALS}
  stops.stop_on_signals()
  yield
  for signum, handler in handlers.items():
    signal.signal(signum, handler)


def test_a_stop_swallowed_by_a_finalizer_is_raised_at_the_next_check(
    command_stops):
  # Python drops what a finalizer raises: a signal handled inside one (a
  # weakref callback of TensorFlow's, say) would be lost, the run going on.
  class Thing:
    pass

  thing = Thing()
  callback = weakref.ref(thing, lambda ref: os.kill(os.getpid(),
                                                    signal.SIGINT))
  del thing  # The callback runs, and the handler raises in it.
  time.sleep(0.1)
  assert callback() is None
  with pytest.raises(stops.Stopped, match='SIGINT'):
    stops.check_stop()


class _SignalAt(actions.Action):
  """An action that sends this process a signal from one of its hooks."""

  def __init__(self, hook: str, signum: int, *, on_epoch: int | None = None):
    self.hook, self.signum, self.on_epoch = hook, signum, on_epoch

  def record(self, context, record):
    if self.on_epoch in (None, record['epoch']):
      self._maybe('record')

  def finish(self, context, *, trained):
    self._maybe('finish')

  def _maybe(self, hook):
    if hook == self.hook:
      os.kill(os.getpid(), self.signum)
      time.sleep(0.05)  # Where the handler runs.


def _config(**overrides):
  return small_config({'model.name': 'dense', 'train.epochs': 2,
                       'outputs.saved_model': True, **overrides})


def test_a_signal_in_the_last_epoch_saves_and_stops_before_the_outputs(
    tmp_path):
  # Before: the run went on to the export and the plots, seconds a
  # preempted machine may not have, and exited 0.
  workdir = str(tmp_path)
  with pytest.raises(errors.Interrupted,
                     match='SIGTERM at step 32: .* to make the outputs'):
    train.train_and_evaluate(_config(), workdir, actions=[
        _SignalAt('record', signal.SIGTERM, on_epoch=2)])
  assert not os.path.exists(os.path.join(workdir, 'export'))
  resumed = train.train_and_evaluate(_config(), workdir)
  assert resumed.metrics == []  # Nothing trained again: only the outputs.
  assert export.is_complete(os.path.join(workdir, 'export'))


def test_a_signal_while_making_the_outputs_is_a_stop_the_next_start_redoes(
    tmp_path, command_stops):
  workdir = str(tmp_path)
  with pytest.raises(errors.Interrupted,
                     match='SIGINT while making the outputs: training is '
                           r'saved \(step 32\)'):
    train.train_and_evaluate(_config(), workdir, actions=[
        _SignalAt('finish', signal.SIGINT)])
  stops._stopping.clear()  # pylint: disable=protected-access
  train.train_and_evaluate(_config(), workdir)
  assert export.is_complete(os.path.join(workdir, 'export'))


class _SignalTurnedIntoAnotherError(actions.Action):
  """What TensorFlow did with a SIGINT while it traced the export (seen in
  CI): raised an error of its own, a TypeError, in the stop's place."""

  def finish(self, context, *, trained):
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)  # Where the handler runs.
    except KeyboardInterrupt:
      raise TypeError('Failed to convert elements of (None, 784) to Tensor')


def test_a_stop_that_code_on_the_way_turned_into_another_error_is_a_stop(
    tmp_path, command_stops):
  with pytest.raises(errors.Interrupted,
                     match='SIGINT while making the outputs'):
    train.train_and_evaluate(_config(), str(tmp_path), actions=[
        _SignalTurnedIntoAnotherError()])


def _stderr_until(process, needle: str, timeout: float = 120) -> str:
  seen, deadline = [], time.time() + timeout
  for line in process.stderr:
    seen.append(line)
    if needle in line or time.time() > deadline:
      break
  return ''.join(seen)


def _wait_for_phase(path: str, phase: str, timeout: float = 120) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      with open(path) as f:
        if f.read().strip() == phase:
          return
    except FileNotFoundError:
      pass
    time.sleep(0.01)
  raise AssertionError(f'never reached phase {phase}')


def _ignoring_sigint():
  # As a command started with `&` by a script inherits it.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


# (signal, moment, what the line says); `loading`: TensorFlow still loading.
_MOMENTS = [
    (signal.SIGTERM, 'finishing', 'while making the outputs'),
    (signal.SIGINT, 'loading', 'while starting'),
    (signal.SIGTERM, 'loading', 'while starting'),
    (signal.SIGINT, 'loading, SIGINT ignored by the parent', 'while starting'),
    (signal.SIGTERM, 'starting', 'while starting, before training'),
    (signal.SIGINT, 'finishing', 'while making the outputs'),
]


@pytest.mark.parametrize('signum, moment, says', [
    case if i < 1 else pytest.param(*case, marks=pytest.mark.slow)
    for i, case in enumerate(_MOMENTS)])
def test_a_signal_at_any_moment_is_one_line_and_the_next_start_continues(
    tmp_path, signum, moment, says):
  # Before: SIGTERM while starting killed the run silently (143); SIGINT was
  # a traceback, or lost where the parent ignored it (the run went on to
  # the end); either while making the outputs was a traceback.
  workdir = str(tmp_path / 'run')
  phase_file = str(tmp_path / 'phase')
  args = (f'--workdir={workdir}', *_RUN_FLAGS)
  process = start_main(
      *args, env=dict(os.environ, MNIST_DIST_PHASE_FILE=phase_file),
      preexec_fn=_ignoring_sigint if 'ignored' in moment else None)
  if moment.startswith('loading'):
    time.sleep(0.5)
  elif moment == 'starting':
    _stderr_until(process, 'Strategy:')
  else:
    _wait_for_phase(phase_file, moment)
  process.send_signal(signum)
  stderr = process.communicate(timeout=120)[1]
  assert process.returncode == errors.EXIT_INTERRUPTED, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines()
           if line.startswith(('stopped:', 'error:'))]
  assert len(lines) == 1 and signal.Signals(signum).name in lines[0], lines
  assert says in lines[0], lines

  again = start_main(*args)
  stderr = again.communicate(timeout=120)[1]
  assert again.returncode == 0, stderr[-2000:]
  assert set(_OUTPUTS) <= set(os.listdir(workdir))
  assert export.is_complete(os.path.join(workdir, 'export'))
