"""Checkpoints written in the background (checkpoint.async_save).

The quick tests hold a write up at will: TensorFlow's saver, patched, waits
for a signal from the test before it writes, so the test can look at the
directory, and change the variables, while a write is under way. The slow
ones run the trainer with slowed writes (benchmarks/slow_store.py) and stop
it, or kill it, during one.
"""

import os
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint as tf_checkpoint

from helpers import finished_state
from helpers import ROOT
from helpers import small_config
from mnist_dist import checkpoints
from mnist_dist import train
from mnist_dist.base import errors


class _Objects:
  """What a run checkpoints, in small: a Keras model's variables (by
  value, as train.py passes them), its Adam optimizer (Keras variables
  only) and a step counter."""

  def __init__(self):
    self.model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    self.optimizer = keras.optimizers.Adam()
    self.optimizer.build(self.model.trainable_variables)
    self.step = tf.Variable(0, dtype=tf.int64)

  def checkpointed(self) -> dict:
    return {'model': [v.value for v in self.model.variables],
            'optimizer': self.optimizer, 'step': self.step}

  def set_all(self, value: float) -> None:
    """Every variable to value: a training step that changes everything."""
    for variable in (*self.model.variables, *self.optimizer.variables):
      variable.assign(tf.fill(variable.shape, tf.cast(value, variable.dtype)))
    self.step.assign(int(value))


def _checkpointer(workdir, objects, *, async_save=True, is_chief=True):
  return checkpoints.Checkpointer(workdir=str(workdir), keep=3,
                                  is_chief=is_chief, async_save=async_save,
                                  **objects.checkpointed())


class _HeldWrites:
  """TensorFlow's saver, made to wait before each write from another thread
  than the test's until the test releases one; started() waits until a
  write is held."""

  def __init__(self, monkeypatch, *, error: Exception | None = None):
    self._permits = threading.Semaphore(0)
    self._started = threading.Semaphore(0)
    original = tf_checkpoint.TrackableSaver.save

    def save(saver, *args, **kwargs):
      if threading.current_thread() is not threading.main_thread():
        self._started.release()
        assert self._permits.acquire(timeout=60), 'never released'
        if error:
          raise error
      return original(saver, *args, **kwargs)
    monkeypatch.setattr(tf_checkpoint.TrackableSaver, 'save', save)

  def started(self):
    assert self._started.acquire(timeout=60), 'no write started'

  def release(self):
    """Lets one write, held or to come, go ahead."""
    self._permits.release()


def _saved(directory, step) -> dict:
  reader = tf.train.load_checkpoint(os.path.join(directory, f'ckpt-{step}'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def _listed(directory) -> list[str]:
  state = tf.train.get_checkpoint_state(str(directory))
  return [os.path.basename(p) for p in state.all_model_checkpoint_paths
          ] if state else []


def test_a_background_write_holds_the_values_at_the_save(tmp_path,
                                                         monkeypatch):
  # The same values through a synchronous save, for reference.
  objects = _Objects()
  with _checkpointer(tmp_path / 'sync', objects, async_save=False) as sync:
    for step in (1, 2, 3):
      objects.set_all(step)
      sync.save(step)
  held = _HeldWrites(monkeypatch)
  with _checkpointer(tmp_path / 'async', objects) as background:
    # Three saves: the copies are made at the first and refreshed after.
    for step in (1, 2, 3):
      objects.set_all(step)
      background.save(step)
      objects.set_all(-1)  # The next step, before the write.
      held.release()
  for step in (1, 2, 3):
    expected = _saved(tmp_path / 'sync' / 'checkpoints', step)
    written = _saved(tmp_path / 'async' / 'checkpoints', step)
    assert written.keys() == expected.keys() and len(written) > 5
    for name, value in expected.items():
      np.testing.assert_array_equal(written[name], value, err_msg=name)


def test_a_write_under_way_is_not_listed_and_the_next_start_skips_it(
    tmp_path, monkeypatch):
  objects = _Objects()
  held = _HeldWrites(monkeypatch)
  directory = tmp_path / 'checkpoints'
  with _checkpointer(tmp_path, objects) as checkpointer:
    held.release()
    objects.set_all(1)
    checkpointer.save(1)
    objects.set_all(2)
    checkpointer.save(2)
    objects.set_all(-1)  # The values training goes on with.
    held.started()
    held.started()  # The second write, now held.
    try:
      assert _listed(directory) == ['ckpt-1']
      # A start now (after a kill, say) resumes from the whole one.
      restarted = _Objects()
      assert _checkpointer(tmp_path, restarted).restore_latest().endswith(
          'ckpt-1')
      assert int(restarted.step.numpy()) == 1
    finally:
      held.release()
  assert _listed(directory) == ['ckpt-1', 'ckpt-2']
  assert int(_saved(directory, 2)['step/.ATTRIBUTES/VARIABLE_VALUE']) == 2


def test_leaving_waits_for_the_write_and_raises_its_error(tmp_path,
                                                          monkeypatch):
  objects = _Objects()
  full = tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
  held = _HeldWrites(monkeypatch, error=full)
  with pytest.raises(tf.errors.ResourceExhaustedError, match='No space'):
    with _checkpointer(tmp_path, objects) as checkpointer:
      checkpointer.save(1)  # Returns: the write is held.
      held.release()
  assert _listed(tmp_path / 'checkpoints') == []


def test_the_next_save_raises_the_previous_writes_error(tmp_path,
                                                        monkeypatch):
  objects = _Objects()
  full = tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
  held = _HeldWrites(monkeypatch, error=full)
  held.release()
  checkpointer = _checkpointer(tmp_path, objects)
  checkpointer.save(1)
  with pytest.raises(tf.errors.ResourceExhaustedError, match='No space'):
    checkpointer.save(2)


def test_a_non_chief_deletes_its_copy_once_written(tmp_path, monkeypatch):
  objects = _Objects()
  held = _HeldWrites(monkeypatch)
  with _checkpointer(tmp_path, objects, is_chief=False) as checkpointer:
    for step in (1, 2):
      checkpointer.save(step)
      held.started()
      held.release()
      checkpointer.wait()
      # Deleted once written, not before: a deletion that did not wait
      # would leave the write's files behind.
      assert not os.path.exists(checkpointer.manager.directory)
  # The chief's: a non-chief never writes there.
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_background_and_synchronous_runs_end_with_the_same_checkpoint(
    tmp_path):
  for async_save in (False, True):
    train.train_and_evaluate(small_config({
        'model.name': 'conv_bn', 'train.ema_decay': 0.9,
        'checkpoint.every_steps': 3, 'checkpoint.async_save': async_save}),
                             str(tmp_path / str(async_save)))
  sync_records, sync_weights = finished_state(tmp_path / 'False')
  records, weights = finished_state(tmp_path / 'True')
  assert records == sync_records
  assert weights.keys() == sync_weights.keys() and weights
  for name, value in sync_weights.items():
    np.testing.assert_array_equal(weights[name], value, err_msg=name)


# 32 steps an epoch in loops of 4, a checkpoint every 8 steps; each write
# takes 5 s more, as on a slow store.
_SLOW_RUN = ('--config=configs/dense_dropout.py',
             '--config.data.source=synthetic',
             '--config.data.synthetic_train_examples=4096',
             '--config.data.synthetic_eval_examples=1000',
             '--config.train.epochs=2', '--config.train.steps_per_loop=4',
             '--config.checkpoint.every_steps=8',
             '--config.outputs.saved_model=False',
             '--config.outputs.plots=False')


def _start(workdir, *, slow_s=0):
  module = 'benchmarks.slow_store' if slow_s else 'mnist_dist.main'
  return subprocess.Popen(
      [sys.executable, '-m', module, f'--workdir={workdir}', *_SLOW_RUN],
      cwd=ROOT, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'SLOW_STORE_S': str(slow_s)})


def _read_until(process, needle) -> str:
  for line in process.stderr:
    if needle in line:
      return line
  raise AssertionError(f'the trainer ended (exit {process.wait()}) without '
                       f'saying {needle!r}')


@pytest.mark.slow  # A trainer process.
def test_sigterm_exits_75_once_its_checkpoint_is_listed_and_whole(tmp_path):
  process = _start(tmp_path, slow_s=5)
  _read_until(process, 'step 12/')
  process.send_signal(signal.SIGTERM)
  stopped = _read_until(process, 'stopped: SIGTERM at step ')
  # Looked at as soon as the trainer says it stopped, not after its exit.
  latest = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  step = int(stopped.split('at step ')[1].split(':')[0])
  assert latest.endswith(f'ckpt-{step}')
  assert int(tf.train.load_checkpoint(latest).get_tensor(
      'step/.ATTRIBUTES/VARIABLE_VALUE')) == step
  process.communicate(timeout=120)
  assert process.returncode == errors.EXIT_INTERRUPTED


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  process = _start(workdir)
  log = process.communicate(timeout=300)[1]
  assert process.returncode == 0, log[-2000:]
  return workdir


@pytest.mark.slow  # Three trainer processes.
def test_killed_during_a_write_resumes_exactly_from_the_one_before(
    tmp_path, uninterrupted):
  process = _start(tmp_path, slow_s=5)
  _read_until(process, 'slow store: writing ')  # The first: ckpt-8.
  _read_until(process, 'Saved checkpoint')
  _read_until(process, 'slow store: writing ')  # ckpt-16, under way.
  process.kill()
  process.communicate(timeout=60)
  assert _listed(tmp_path / 'checkpoints') == ['ckpt-8']
  resumed = _start(tmp_path)
  log = resumed.communicate(timeout=300)[1]
  assert resumed.returncode == 0, log[-2000:]
  assert 'ckpt-8 at step 8' in log and 'unreadable' not in log, log[-2000:]
  records, weights = finished_state(tmp_path)
  reference_records, reference_weights = finished_state(uninterrupted)
  assert [r['epoch'] for r in records] == [1, 2]
  for record, expected in zip(records, reference_records, strict=True):
    for key, value in expected.items():
      assert record[key] == pytest.approx(value, rel=1e-6), key
  assert weights.keys() == reference_weights.keys() and weights
  for name, value in reference_weights.items():
    np.testing.assert_array_equal(weights[name], value, err_msg=name)
