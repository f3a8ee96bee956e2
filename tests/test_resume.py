"""Checkpoints, resuming, signals and non-finite losses."""

import json
import logging
import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_refused
from helpers import finished_state
from helpers import run_main
from helpers import small_config
from helpers import start_main
from mnist_dist import steps
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.base import workdir as workdir_lib

# dense_dropout: dropout makes the random state part of what must resume.
_RUN_FLAGS = ('--config=configs/dense_dropout.py', '--config.data.source=synthetic',
              '--config.data.synthetic_train_examples=4096',
              '--config.data.synthetic_eval_examples=1000',
              '--config.train.epochs=3', '--config.train.steps_per_loop=4',
              '--config.checkpoint.every_steps=10')


def _start(workdir, *extra):
  return start_main(f'--workdir={workdir}', *_RUN_FLAGS, *extra)


def _wait_for_line(process, needle, timeout=120):
  deadline = time.time() + timeout
  lines = []
  for line in process.stderr:
    lines.append(line)
    if needle in line or time.time() > deadline:
      return lines
  return lines


# The extras add state that must resume too: the augmentation stream and the
# weight average (which the checkpointed model variables are not); and
# gradient accumulation, whose steps (updates) the checkpoint counts.
@pytest.mark.parametrize('extras', [(), (
    '--config.data.augment.max_shift=2', '--config.data.augment.max_rotation=10',
    '--config.train.ema_decay=0.9'), ('--config.train.accumulation_steps=4',)])
@pytest.mark.slow  # Three trainer processes.
def test_sigterm_then_resume_lands_where_an_uninterrupted_run_does(tmp_path,
                                                                   extras):
  uninterrupted = _start(tmp_path / 'straight', *extras)
  uninterrupted.communicate(timeout=300)
  assert uninterrupted.returncode == 0

  interrupted = _start(tmp_path / 'stopped', *extras)
  _wait_for_line(interrupted, 'step 52/')  # Mid-epoch 2 of 3 (32 per epoch).
  interrupted.send_signal(signal.SIGTERM)
  rest = interrupted.communicate(timeout=120)[1]
  assert interrupted.returncode == errors.EXIT_INTERRUPTED, rest[-2000:]
  assert 'run the same command again to resume' in rest
  resumed = _start(tmp_path / 'stopped', *extras)
  log = resumed.communicate(timeout=300)[1]
  assert resumed.returncode == 0, log[-2000:]
  assert 'Resuming from' in log

  _assert_same_state(tmp_path / 'stopped', tmp_path / 'straight',
                     epochs=[1, 2, 3])


def _assert_same_state(workdir, straight_workdir, *, epochs):
  """workdir's checkpointed weights equal straight_workdir's, bit for bit,
  and its metrics.jsonl records, one for each of `epochs`."""
  straight_records, straight_weights = finished_state(straight_workdir)
  records, weights = finished_state(workdir)
  assert [r['epoch'] for r in records] == epochs
  assert straight_weights.keys() == weights.keys() and weights
  for name, value in straight_weights.items():
    np.testing.assert_array_equal(value, weights[name], err_msg=name)
  # Metrics equal but for float rounding: the interrupted epoch's sums were
  # added up in other loop-sized pieces.
  for straight, record in zip(straight_records, records, strict=True):
    assert straight.keys() == record.keys()
    for key, value in straight.items():
      assert record[key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.slow  # A trainer process.
def test_second_signal_exits_at_once(tmp_path):
  # Loops of 32 conv_bn steps (a second or more): the second SIGTERM comes
  # while the first still waits for its loop to end.
  process = _start(tmp_path, '--config.model.name=conv_bn',
                   '--config.train.steps_per_loop=32')
  _wait_for_line(process, 'step 32/')
  process.send_signal(signal.SIGTERM)
  _wait_for_line(process, 'SIGTERM received')
  process.send_signal(signal.SIGTERM)
  process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM


def _config(tmp_path, **overrides):
  return small_config({'model.name': 'dense', 'checkpoint.every_steps': 5,
                       **overrides})


def test_sigterm_checkpoints_and_the_resume_lands_where_a_straight_run_does(
    tmp_path, monkeypatch):
  """test_sigterm_then_resume_lands_where_an_uninterrupted_run_does, quick
  and in-process (main's exit 75 aside): SIGTERM mid-epoch -> a checkpoint
  at the step the loop ended -> Interrupted -> the next start resumes there
  and ends bit for bit where an uninterrupted run does. Dropout and the
  weight average are on: each has state that must resume, as do the epoch's
  running sums."""
  config = _config(tmp_path, **{
      'model.name': 'dense_dropout', 'train.epochs': 2,
      'data.synthetic_train_examples': 512, 'data.synthetic_eval_examples': 300,
      'train.steps_per_loop': 2, 'checkpoint.every_steps': 100,
      'train.ema_decay': 0.9})
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  make_train_loop = steps.make_train_loop

  def signalled_in_loop_6(**kwargs):
    loop, calls = make_train_loop(**kwargs), []

    def train_loop(iterator, num_steps):
      calls.append(num_steps)
      if len(calls) == 6:  # Steps 11 and 12 of 16: mid-epoch 2.
        os.kill(os.getpid(), signal.SIGTERM)
      return loop(iterator, num_steps)
    return train_loop

  monkeypatch.setattr(steps, 'make_train_loop', signalled_in_loop_6)
  with pytest.raises(errors.Interrupted, match='SIGTERM at step 12'):
    train.train_and_evaluate(config, str(tmp_path / 'stopped'))
  monkeypatch.undo()
  assert tf.train.latest_checkpoint(
      str(tmp_path / 'stopped' / 'checkpoints')).endswith('ckpt-12')
  resumed = train.train_and_evaluate(config, str(tmp_path / 'stopped'))
  assert [r['epoch'] for r in resumed.metrics] == [2]
  for want, got in zip(straight.model.get_weights(),
                       resumed.model.get_weights(), strict=True):
    np.testing.assert_array_equal(got, want)  # The averages.
  _assert_same_state(tmp_path / 'stopped', tmp_path / 'straight',
                     epochs=[1, 2])


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  train.train_and_evaluate(_config(tmp_path, **{'train.epochs': 2}),
                           str(tmp_path))
  directory = tf.train.get_checkpoint_state(
      str(tmp_path / 'checkpoints')).all_model_checkpoint_paths
  latest, previous = directory[-1], directory[-2]
  data_file = latest + '.data-00000-of-00001'
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)
  caplog.set_level(logging.INFO)
  result = train.train_and_evaluate(
      _config(tmp_path, **{'train.epochs': 3,
                           'resume.accept_changes': True}), str(tmp_path))
  assert f'Checkpoint {latest} is unreadable' in caplog.text
  assert f'Resuming from {previous}' in caplog.text
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(line)['epoch'] for line in f] == [1, 2, 3]
  assert result.metrics[-1]['epoch'] == 3


def _truncate_every_checkpoint(workdir) -> list[str]:
  """Cuts every checkpoint's data files in half, as a power loss can leave
  them; returns the checkpoints' paths."""
  listed = tf.train.get_checkpoint_state(
      str(workdir / 'checkpoints')).all_model_checkpoint_paths
  for path in listed:
    for data_file in tf.io.gfile.glob(path + '.data-*'):
      with open(data_file, 'r+b') as f:
        f.truncate(os.path.getsize(data_file) // 2)
  return list(listed)


def _files(workdir) -> dict[str, bytes]:
  """{path relative to workdir: contents} of every file under workdir."""
  return {os.path.relpath(os.path.join(folder, name), workdir):
          open(os.path.join(folder, name), 'rb').read()
          for folder, _, names in os.walk(workdir) for name in names}


def test_no_readable_checkpoint_is_refused_and_changes_nothing(tmp_path):
  train.train_and_evaluate(_config(tmp_path), str(tmp_path))
  listed = _truncate_every_checkpoint(tmp_path)
  before = _files(tmp_path)
  # A value changed too, which config.json would record.
  with pytest.raises(errors.CheckpointError) as refused:
    train.train_and_evaluate(_config(tmp_path, **{'checkpoint.keep': 5}),
                             str(tmp_path))
  message = str(refused.value)
  assert message.startswith(
      f'none of the checkpoints in {tmp_path / "checkpoints"} can be read (')
  assert all(os.path.basename(path) in message for path in listed), message
  assert f'move {tmp_path / "checkpoints"} away to start the run over' in (
      message)
  assert _files(tmp_path) == before
  # Starting over, the documented way.
  os.rename(tmp_path / 'checkpoints', tmp_path / 'damaged')
  again = train.train_and_evaluate(_config(tmp_path), str(tmp_path))
  assert [r['step'] for r in again.metrics] == [16]


@pytest.mark.slow  # A trainer process.
def test_no_readable_checkpoint_exits_2_with_one_line(tmp_path):
  flags = (f'--workdir={tmp_path}', '--config=configs/dense.py',
           '--config.data.source=synthetic',
           '--config.data.synthetic_train_examples=1024',
           '--config.data.synthetic_eval_examples=1000',
           '--config.train.epochs=1', '--config.checkpoint.every_steps=3')
  assert run_main(*flags, timeout=120).returncode == 0
  _truncate_every_checkpoint(tmp_path)
  before = _files(tmp_path)
  process = run_main(*flags, timeout=120)
  assert_refused(process, says='error: none of the checkpoints in ')
  assert _files(tmp_path) == before


def test_workdir_of_another_model_is_refused_by_name(tmp_path):
  train.train_and_evaluate(_config(tmp_path), str(tmp_path))
  with pytest.raises(errors.WorkdirError,
                     match="model.name was 'dense', now 'conv'"):
    train.train_and_evaluate(_config(tmp_path, **{'model.name': 'conv'}),
                             str(tmp_path))


def test_finished_run_started_again_does_nothing_more(tmp_path):
  train.train_and_evaluate(_config(tmp_path), str(tmp_path))
  again = train.train_and_evaluate(_config(tmp_path), str(tmp_path))
  assert again.metrics == []
  with open(tmp_path / 'metrics.jsonl') as f:
    assert len(f.readlines()) == 1


def _absurd_lr(tmp_path, mode):
  # One good epoch, then one at a learning rate that makes the loss explode.
  train.train_and_evaluate(_config(tmp_path, **{'optimizer.name': 'sgd'}),
                           str(tmp_path))
  return _config(tmp_path, **{
      'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e30,
      'train.epochs': 2, 'train.on_nonfinite_loss': mode,
      'resume.accept_changes': True})


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _absurd_lr(tmp_path, 'stop')
  good = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  with pytest.raises(errors.NonFiniteError, match='not finite at step 1[78]'):
    train.train_and_evaluate(config, str(tmp_path))
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')) == good


def test_nonfinite_steps_are_skipped_on_every_replica_the_others_train(
    tmp_path):
  # Epoch 2's learning rate of 1e30 blows the weights up within a few steps:
  # its first step trains, the next ones overflow and must be skipped. On
  # 2 replicas a step is skipped on both or on neither, so 1 and 2 replicas
  # skip the same steps and end with the same (finite) weights.
  outcomes = []
  for replicas in (1, 2):
    workdir = str(tmp_path / str(replicas))
    devices = {'distribution.cpu_devices': replicas if replicas > 1 else 0}
    good = train.train_and_evaluate(
        _config(tmp_path, **{'optimizer.name': 'sgd', **devices}), workdir)
    result = train.train_and_evaluate(_config(tmp_path, **{
        'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e30,
        'train.epochs': 2, 'train.on_nonfinite_loss': 'skip',
        'resume.accept_changes': True, **devices}),
                                      workdir)
    (record,) = result.metrics
    assert record['epoch'] == 2 and record['step'] == 32
    # Some steps skipped, and not all: the finite ones trained.
    assert 0 < record['nonfinite_steps'] < 16
    weights = result.model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    assert not all(np.array_equal(before, after) for before, after
                   in zip(good.model.get_weights(), weights, strict=True))
    outcomes.append((record['nonfinite_steps'], weights))
  (skipped_1, weights_1), (skipped_2, weights_2) = outcomes
  assert skipped_1 == skipped_2
  # Relative to each tensor's scale (1e24 after the blow-up): elements that
  # the summation order leaves near 0 differ more in relative terms.
  for one, two in zip(weights_1, weights_2, strict=True):
    assert np.abs(one - two).max() <= 1e-4 * np.abs(two).max()


@pytest.mark.slow  # A trainer process.
def test_nonfinite_loss_exit_code_through_the_entry_point(tmp_path):
  process = run_main(
      f'--workdir={tmp_path}', '--config=configs/dense.py',
      '--config.optimizer.name=sgd', '--config.data.source=synthetic',
      '--config.optimizer.learning_rate=1e30', '--config.train.epochs=1',
      '--config.train.steps_per_loop=10', timeout=120)
  assert_refused(process, code=3,
                 says='error: the loss is not finite at step')


def test_config_json_records_the_run(tmp_path):
  config = _config(tmp_path)
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / workdir_lib.CONFIG) as f:
    assert json.load(f) == json.loads(config.to_json())

