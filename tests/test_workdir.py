"""The workdir: written whole, held by one trainer, finished idempotently."""

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_refused
from helpers import checkpoint_variables
from helpers import ROOT
from helpers import run_main
from helpers import small_config
from helpers import start_main
from mnist_dist import steps
from mnist_dist import train
from mnist_dist import trainable
from mnist_dist.base import errors
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.outputs import actions as actions_lib
from mnist_dist.outputs import metrics_file

_SMALL = ('--config=configs/dense.py', '--config.data.source=synthetic',
          '--config.data.synthetic_train_examples=1024',
          '--config.data.synthetic_eval_examples=1000',
          '--config.train.epochs=1', '--config.train.steps_per_loop=4',
          '--config.outputs.tensorboard=False',
          '--config.outputs.saved_model=False', '--config.outputs.plots=False')


def _dense(**overrides):
  return small_config({'model.name': 'dense', **overrides})


def test_a_damaged_config_json_is_one_line_and_exit_2(tmp_path):
  train.train_and_evaluate(_dense(), str(tmp_path))
  path = tmp_path / workdir_lib.CONFIG
  path.write_text(path.read_text()[:40])  # As a crash mid-write would.
  process = run_main(f'--workdir={tmp_path}', *_SMALL)
  assert_refused(process, says=f'{path} is damaged')


def test_config_json_is_replaced_whole(tmp_path, monkeypatch):
  # A process stopped while writing leaves the old file, never a torn one.
  workdir_lib.write_atomically(str(tmp_path / 'f'), 'old')

  def crash(*args):
    raise KeyboardInterrupt
  monkeypatch.setattr(os, 'replace', crash)
  with pytest.raises(KeyboardInterrupt):
    workdir_lib.write_atomically(str(tmp_path / 'f'), 'new')
  assert (tmp_path / 'f').read_text() == 'old'


def test_a_file_is_on_disk_before_it_takes_the_name(tmp_path, monkeypatch):
  # Flushed and fsynced under its temporary name, then renamed: a crash of
  # the machine right after the rename cannot leave an empty file.
  events = []
  fsync, replace = os.fsync, os.replace
  monkeypatch.setattr(os, 'fsync', lambda fd: (
      events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}'))), fsync(fd)))
  monkeypatch.setattr(os, 'replace', lambda src, dst: (
      events.append(('replace', src, dst)), replace(src, dst)))
  path = str(tmp_path / 'f')
  workdir_lib.write_atomically(path, 'data')
  temporary = events[0][1]
  assert temporary.startswith(f'{path}.tmp-{os.getpid()}-')
  assert events == [('fsync', temporary), ('replace', temporary, path)]
  assert (tmp_path / 'f').read_text() == 'data'


# Each run-defining setting with another value than small_config's: the
# docs' list (seed, model, optimizer, batch, precision, data), written out
# here, not read from workdir.RUN_DEFINING_KEYS, so that a key dropped there
# fails.
@pytest.mark.parametrize('key,other', [
    ('seed', 1), ('model.name', 'dense'), ('model.width', 2),
    ('optimizer.name', 'sgd'), ('train.ema_decay', 0.9),
    ('train.global_batch_size', 128), ('train.precision', 'mixed_bfloat16'),
    ('data.source', 'idx'), ('data.train_examples', 512),
    ('data.validation_split', 100)])
def test_a_start_with_another_run_defining_value_is_refused(tmp_path, key,
                                                             other):
  workdir_lib.check_and_record_config(small_config(), str(tmp_path),
                                      write=True)
  was = functools.reduce(lambda node, part: node[part], key.split('.'),
                         small_config())
  with pytest.raises(errors.WorkdirError,
                     match=f'{key} was {was!r}, now {other!r}'):
    workdir_lib.check_and_record_config(small_config({key: other}),
                                        str(tmp_path), write=True)


def test_a_start_with_other_settings_that_define_no_run_is_accepted(tmp_path):
  workdir_lib.check_and_record_config(small_config(), str(tmp_path),
                                      write=True)
  longer = small_config({'train.epochs': 5, 'checkpoint.every_steps': 7,
                         'train.steps_per_loop': 4, 'outputs.plots': True,
                         'train.stop_at_accuracy': 0.5})
  workdir_lib.check_and_record_config(longer, str(tmp_path), write=True)
  assert workdir_lib.read_config(str(tmp_path)) == longer  # Recorded.


def test_taking_the_lock_removes_what_killed_writers_left(tmp_path):
  (tmp_path / 'plots').mkdir()
  export_left = tmp_path / 'export.tmp-12345'
  export_left.mkdir()
  (export_left / 'saved_model.pb').write_bytes(b'half')
  left = [tmp_path / 'metrics.jsonl.tmp-12345',
          tmp_path / 'plots' / 'predictions.png.tmp-12345']
  kept = [tmp_path / 'metrics.jsonl', tmp_path / 'plots' / 'predictions.png']
  for path in left + kept:
    path.write_text(path.name)
  with workdir_lib.Lock(str(tmp_path)):
    assert not [path for path in [export_left, *left] if path.exists()]
  assert [path.read_text() for path in kept] == [path.name for path in kept]


@pytest.mark.slow  # Two trainer processes.
def test_a_second_trainer_is_refused_while_the_first_holds_the_workdir(
    tmp_path):
  first = start_main(f'--workdir={tmp_path}', *_SMALL,
                     '--config.train.epochs=100')
  for line in first.stderr:
    if 'step ' in line:
      break
  second = run_main(f'--workdir={tmp_path}', *_SMALL)
  first.send_signal(signal.SIGTERM)
  first.communicate(timeout=120)
  line = assert_refused(second, says=f'{tmp_path} is in use by pid '
                        f'{first.pid} on {socket.gethostname()} since ')
  assert str(tmp_path / workdir_lib.LOCK) in line
  # The first released it on its way out: the workdir can be resumed.
  assert not (tmp_path / workdir_lib.LOCK).exists()
  assert run_main(f'--workdir={tmp_path}', *_SMALL).returncode == 0


def _write_lock(workdir, **holder):
  workdir.mkdir(exist_ok=True)
  (workdir / workdir_lib.LOCK).write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': os.getpid(),
       'started': '2026-01-01T00:00:00+00:00', 'renewed': time.time(),
       **holder}))


def _dead_pid():
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


@pytest.mark.parametrize('holder', [
    {'pid': 'dead'},  # Its process is gone from this host.
    {'host': 'another-machine', 'renewed': 0.0},  # Not renewed for long.
], ids=['dead-process', 'not-renewed'])
def test_a_stale_lock_is_taken_over(tmp_path, holder, caplog):
  _write_lock(tmp_path, **{k: _dead_pid() if v == 'dead' else v
                           for k, v in holder.items()})
  caplog.set_level('WARNING')
  assert train.train_and_evaluate(_dense(), str(tmp_path)).metrics
  assert 'Taking over' in caplog.text
  assert not (tmp_path / workdir_lib.LOCK).exists()


def test_a_live_lock_of_another_machine_is_respected(tmp_path):
  _write_lock(tmp_path, host='another-machine', pid=1)
  with pytest.raises(errors.WorkdirError,
                     match='is in use by pid 1 on another-machine'):
    train.train_and_evaluate(_dense(), str(tmp_path))
  assert (tmp_path / workdir_lib.LOCK).exists()  # Not ours to remove.


def test_the_lock_is_renewed_while_held(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib.Lock, 'RENEW_S', 0.05)
  lock_path = tmp_path / workdir_lib.LOCK

  def renewed():
    return json.loads(lock_path.read_text())['renewed']
  with workdir_lib.Lock(str(tmp_path)):
    taken = renewed()
    deadline = time.time() + 10
    while renewed() == taken and time.time() < deadline:
      time.sleep(0.05)
    assert renewed() > taken


def test_a_live_lock_of_this_host_is_respected(tmp_path):
  _write_lock(tmp_path, pid=os.getppid())  # Alive: this test's parent.
  with pytest.raises(errors.WorkdirError,
                     match=f'is in use by pid {os.getppid()} on '
                     f'{socket.gethostname()}'):
    with workdir_lib.Lock(str(tmp_path)):
      pass
  assert (tmp_path / workdir_lib.LOCK).exists()


# --- Issue 33, items 1 and 2: nothing outside the workdir; the lock. -------


def _outside(tmp_path):
  """A folder outside the workdir holding a file, and a file: what planted
  links point to. Returns (folder, file, a snapshot of both)."""
  folder = tmp_path / 'outside'
  folder.mkdir()
  (folder / 'precious').write_text('precious')
  file = tmp_path / 'outside.txt'
  file.write_text('outside')

  def snapshot():
    return (sorted(p.name for p in folder.iterdir()),
            (folder / 'precious').read_text(), file.read_text())
  return folder, file, snapshot


@pytest.mark.parametrize('folder', ['', 'plots', 'export', 'checkpoints'])
def test_links_planted_in_the_workdir_lead_nowhere_outside(tmp_path, folder):
  outside_folder, outside_file, snapshot = _outside(tmp_path)
  before = snapshot()
  workdir = tmp_path / 'workdir'
  where = workdir / folder
  where.mkdir(parents=True)
  links = {  # Named like temporaries, and like files the run writes.
      'metrics.jsonl.tmp-4242': outside_folder,
      'predictions.png.tmp-4242-0123abcd': outside_file,
      'model.tflite.tmp-4242': outside_folder / 'precious',
      # Where a predictable temporary of a write would be.
      f'written.json.tmp-{os.getpid()}': outside_file,
      'written.json': outside_file}
  for name, target in links.items():
    (where / name).symlink_to(target)
  leftovers = [where / 'a.png.tmp-4242-00ff', where / 'export.tmp-4242']
  leftovers[0].write_text('half')
  leftovers[1].mkdir()
  (leftovers[1] / 'saved_model.pb').write_text('half')
  with workdir_lib.Lock(str(workdir)):  # Cleans up.
    workdir_lib.write_atomically(str(where / 'written.json'), 'new')
    workdir_lib.write_atomically(str(where / 'metrics.jsonl'), 'new')
  assert snapshot() == before
  # The links named like temporaries are not the project's: left alone.
  assert all((where / name).is_symlink() for name in list(links)[:4])
  # A link at a written path is replaced, not written through.
  assert not (where / 'written.json').is_symlink()
  assert (where / 'written.json').read_text() == 'new'
  if folder in ('', 'plots', 'export'):  # Where temporaries are written.
    assert not [path for path in leftovers if path.exists()]


def test_remove_deletes_a_link_never_what_it_points_to(tmp_path):
  outside_folder, outside_file, snapshot = _outside(tmp_path)
  before = snapshot()
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  (workdir / 'export').symlink_to(outside_folder)
  (workdir / 'plots').mkdir()
  (workdir / 'plots' / 'inner').symlink_to(outside_folder)
  (workdir / 'plots' / 'file').symlink_to(outside_file)
  workdir_lib.remove(str(workdir / 'export'))
  workdir_lib.remove(str(workdir / 'plots'))
  assert snapshot() == before
  assert not os.path.lexists(workdir / 'export')
  assert not os.path.lexists(workdir / 'plots')


def test_a_temporary_name_is_unpredictable_and_created_exclusively(
    tmp_path, monkeypatch):
  path = str(tmp_path / 'metrics.jsonl')
  assert workdir_lib.temporary_name(path) != workdir_lib.temporary_name(path)
  _, outside_file, snapshot = _outside(tmp_path)
  before = snapshot()
  # Were a name guessed, whatever is there is never opened: a link or a file.
  guessed = tmp_path / 'guessed'
  monkeypatch.setattr(workdir_lib, 'temporary_name', lambda path: guessed)
  for planted in (lambda: guessed.symlink_to(outside_file),
                  lambda: guessed.write_text('someone else\'s')):
    planted()
    with pytest.raises(FileExistsError):
      workdir_lib.write_atomically(path, 'data')
    assert snapshot() == before
    if not guessed.is_symlink():
      assert guessed.read_text() == 'someone else\'s'
    guessed.unlink()
  assert not os.path.exists(path)


def _sleeper():
  """A live process other than this one, as another starter would be: its
  pid and identity. The caller kills it."""
  process = subprocess.Popen(['sleep', '600'])
  return process, {'pid': process.pid, **_identity(process.pid)}


def _starter(workdir, sleeper):
  """A Lock of workdir as another process (sleeper's) would hold it."""
  lock = workdir_lib.Lock(str(workdir))
  lock._holder.update(sleeper[1])  # pylint: disable=protected-access
  return lock


def test_of_two_starters_on_a_stale_lock_exactly_one_wins(tmp_path,
                                                           monkeypatch):
  sleepers = [_sleeper(), _sleeper()]
  # Both judge the lock stale before either acts on it: the race made sure.
  barrier = threading.Barrier(2, timeout=2)
  judge = workdir_lib.Lock._stale_because  # pylint: disable=protected-access

  def judged_together(self, *args):
    reason = judge(self, *args)
    try:
      barrier.wait()
    except threading.BrokenBarrierError:
      pass
    return reason
  monkeypatch.setattr(workdir_lib.Lock, '_stale_because', judged_together)
  try:
    for _ in range(20):
      _write_lock(tmp_path, pid=_dead_pid())
      barrier.reset()
      locks = [_starter(tmp_path, sleeper) for sleeper in sleepers]
      outcomes = [None, None]

      def start(i):
        try:
          locks[i].__enter__()
          outcomes[i] = 'won'
        except Exception as e:  # pylint: disable=broad-except
          outcomes[i] = e
      threads = [threading.Thread(target=start, args=(i,)) for i in (0, 1)]
      for thread in threads:
        thread.start()
      for thread in threads:
        thread.join()
      assert outcomes.count('won') == 1, outcomes
      winner = outcomes.index('won')
      loser = outcomes[1 - winner]
      assert isinstance(loser, errors.WorkdirError), repr(loser)
      assert '\n' not in str(loser)
      held = json.loads((tmp_path / workdir_lib.LOCK).read_text())
      assert held['pid'] == sleepers[winner][1]['pid']
      locks[winner].__exit__(None, None, None)
      assert not (tmp_path / workdir_lib.LOCK).exists()
  finally:
    for process, _ in sleepers:
      process.kill()
      process.wait()


def test_a_late_starter_never_takes_the_lock_a_quicker_one_just_took(
    tmp_path, monkeypatch):
  # The late one judged the old lock stale; by the time it acts, the quick
  # one has replaced that lock with its own, which is not stale.
  sleepers = [_sleeper(), _sleeper()]
  late_judged, quick_done = threading.Event(), threading.Event()
  judge = workdir_lib.Lock._stale_because  # pylint: disable=protected-access
  late = _starter(tmp_path, sleepers[1])

  def slow_for_late(self, *args):
    reason = judge(self, *args)
    if self is late:
      late_judged.set()
      quick_done.wait(10)
    return reason
  monkeypatch.setattr(workdir_lib.Lock, '_stale_because', slow_for_late)
  _write_lock(tmp_path, pid=_dead_pid())
  outcome = []
  thread = threading.Thread(target=lambda: outcome.append(
      pytest.raises(errors.WorkdirError, late.__enter__)))
  try:
    thread.start()
    assert late_judged.wait(10)  # It has read the stale lock, judged it.
    with _starter(tmp_path, sleepers[0]):
      quick_done.set()
      thread.join()
      held = json.loads((tmp_path / workdir_lib.LOCK).read_text())
      assert held['pid'] == sleepers[0][1]['pid']  # Still the quick one's.
  finally:
    quick_done.set()
    for process, _ in sleepers:
      process.kill()
      process.wait()
  assert 'just taken by another trainer' in str(outcome[0].value)


def test_an_empty_lock_is_respected_while_fresh(tmp_path):
  lock_path = tmp_path / workdir_lib.LOCK
  lock_path.write_text('')  # Created, not yet written, by another starter.
  with pytest.raises(errors.WorkdirError, match='is being taken by another'):
    with workdir_lib.Lock(str(tmp_path)):
      pass
  assert lock_path.read_text() == ''
  old = time.time() - 3600  # Left empty by a crash, long ago.
  os.utime(lock_path, (old, old))
  with workdir_lib.Lock(str(tmp_path)):
    assert json.loads(lock_path.read_text())['pid'] == os.getpid()


def _taken_by_another(lock_path, sleeper):
  workdir_lib.write_atomically(str(lock_path), json.dumps(
      {'host': socket.gethostname(), 'started': '2026-01-01T00:00:00+00:00',
       'renewed': time.time(), **sleeper[1]}))


def _lost(lock):
  deadline = time.time() + 10
  while lock.lost() is None and time.time() < deadline:
    time.sleep(0.02)
  return lock.lost()


def test_a_renewer_that_lost_the_lock_stops_the_run(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib.Lock, 'RENEW_S', 0.02)
  lock_path = tmp_path / workdir_lib.LOCK
  sleeper = _sleeper()
  try:
    lock = workdir_lib.Lock(str(tmp_path))
    with pytest.raises(errors.WorkdirError) as raised:
      with lock:
        _taken_by_another(lock_path, sleeper)
        assert _lost(lock) is not None
    assert json.loads(lock_path.read_text())['pid'] == sleeper[0].pid
  finally:
    sleeper[0].kill()
    sleeper[0].wait()
  assert str(raised.value) == (
      f'{tmp_path}: lost its lock to another trainer ({lock_path} names pid '
      f'{sleeper[0].pid} on {socket.gethostname()}); stopped, keeping the '
      'last checkpoint: run one trainer at a time per workdir')


def test_a_renewer_that_cannot_write_the_lock_stops_the_run(tmp_path,
                                                            monkeypatch):
  monkeypatch.setattr(workdir_lib.Lock, 'RENEW_S', 0.02)
  lock = workdir_lib.Lock(str(tmp_path))
  with pytest.raises(errors.WorkdirError,
                     match='cannot renew its lock .*No space left on device'):
    with lock:
      def full(*args):
        raise OSError(28, 'No space left on device')
      monkeypatch.setattr(os, 'pwrite', full)
      monkeypatch.setattr(os, 'replace', full)
      assert _lost(lock) is not None


def test_a_trainer_that_lost_its_lock_saves_and_stops(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib.Lock, 'RENEW_S', 0.02)
  locks = []
  enter = workdir_lib.Lock.__enter__
  monkeypatch.setattr(workdir_lib.Lock, '__enter__',
                      lambda self: locks.append(self) or enter(self))
  sleeper = _sleeper()

  class Thief(actions_lib.Action):
    """Takes the lock over after the first of the epoch's two loops."""

    def loop_end(self, context, **kwargs):
      if not locks[0].lost():
        _taken_by_another(tmp_path / workdir_lib.LOCK, sleeper)
        _lost(locks[0])
  try:
    with pytest.raises(errors.WorkdirError, match='lost its lock'):
      train.train_and_evaluate(_dense(), str(tmp_path), actions=[Thief()])
    held = json.loads((tmp_path / workdir_lib.LOCK).read_text())
    assert held['pid'] == sleeper[0].pid  # Not released: not ours.
  finally:
    sleeper[0].kill()
    sleeper[0].wait()
  # Saved at the end of the loop where the loss was seen, mid-epoch.
  assert tf.train.latest_checkpoint(
      str(tmp_path / workdir_lib.CHECKPOINTS)).endswith('-8')


@pytest.mark.slow  # Two runs, an export and plots.
def test_a_finished_run_makes_a_missing_export_and_plots_untrained(tmp_path):
  config = _dense(**{'outputs.saved_model': True, 'outputs.plots': True})
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    metrics = f.read()
  expected_plots = sorted(os.listdir(tmp_path / 'plots'))
  tf.io.gfile.rmtree(str(tmp_path / 'export'))  # As a kill during the export.
  (tmp_path / 'plots' / 'confusion_matrix.png').unlink()
  # What a kill mid-write leaves under temporary names goes at the next start.
  (tmp_path / 'export.tmp-12345').mkdir()
  (tmp_path / 'plots' / 'predictions.png.tmp-12345').write_bytes(b'half')
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again.metrics == []  # Nothing trained.
  with open(tmp_path / 'metrics.jsonl') as f:
    assert f.read() == metrics
  assert (tmp_path / 'export' / 'saved_model.pb').exists()
  assert sorted(os.listdir(tmp_path / 'plots')) == expected_plots
  assert not [name for folder in (tmp_path, tmp_path / 'plots')
              for name in os.listdir(folder) if '.tmp-' in name]


def test_weights_that_blew_up_are_never_checkpointed(tmp_path, monkeypatch):
  # An update that overflows leaves infinite weights after a step whose loss
  # was finite: the loop reports nothing wrong, and the checkpoint due right
  # after it must not be saved. The overflow is simulated by the loop below
  # (the real loop, then one weight set to infinity at its last step), since
  # whether real gradients overflow depends on the data.
  train.train_and_evaluate(_dense(**{'optimizer.name': 'sgd'}), str(tmp_path))
  built, build_model = [], trainable.build_model
  make_train_loop = steps.make_train_loop

  def building(*args, **kwargs):
    built.append(build_model(*args, **kwargs))
    return built[-1]

  def blowing_up(**kwargs):
    loop = make_train_loop(**kwargs)

    def blown_up_loop(iterator, num_steps):
      totals = loop(iterator, num_steps)
      weight = built[-1].model.trainable_variables[0]
      weight.assign(tf.fill(weight.shape, np.inf))
      return totals
    return blown_up_loop

  monkeypatch.setattr(trainable, 'build_model', building)
  monkeypatch.setattr(steps, 'make_train_loop', blowing_up)
  with pytest.raises(errors.NonFiniteError,
                     match='weights are not finite at step 17'):
    train.train_and_evaluate(_dense(**{
        'optimizer.name': 'sgd', 'train.epochs': 2,
        'train.steps_per_loop': 1, 'checkpoint.every_steps': 1}),
                             str(tmp_path))
  latest = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  assert latest.endswith('ckpt-16')
  assert all(np.isfinite(value).all()
             for value in checkpoint_variables(tmp_path).values())


def _loss_scale(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith('loss_scale/')}


@pytest.mark.slow  # float16 on a CPU: no native kernels.
def test_a_mixed_float16_run_resumes_with_its_loss_scale(tmp_path):
  config = {'train.precision': 'mixed_float16', 'train.epochs': 2}
  straight = train.train_and_evaluate(_dense(**config), str(tmp_path / 'a'))
  train.train_and_evaluate(_dense(**{**config, 'train.epochs': 1}),
                           str(tmp_path / 'b'))
  resumed = train.train_and_evaluate(_dense(**config), str(tmp_path / 'b'))
  for w1, w2 in zip(straight.model.get_weights(), resumed.model.get_weights(),
                    strict=True):
    np.testing.assert_array_equal(w1, w2)
  scale = _loss_scale(tmp_path / 'a')
  assert scale and scale.keys() == _loss_scale(tmp_path / 'b').keys()
  for name, value in scale.items():
    np.testing.assert_array_equal(_loss_scale(tmp_path / 'b')[name], value)


@pytest.mark.parametrize('flag, expected', [
    ('--workdir=gs://mnist-dist-no-such-bucket/run',
     '--workdir=gs://mnist-dist-no-such-bucket/run: cannot use it: '),
    ('--config.data.dir=gs://mnist-dist-no-such-bucket/mnist',
     'gs://mnist-dist-no-such-bucket/mnist: cannot use it (data.dir): '),
])
def test_an_unusable_remote_path_is_one_line_with_its_cause(tmp_path, flag,
                                                            expected):
  args = [f'--workdir={tmp_path}', *_SMALL, '--config.data.source=auto', flag]
  line = assert_refused(run_main(*args), says=expected)
  # Here, without network access, the cause is the network; elsewhere it may
  # be credentials or a missing bucket, but always one of these.
  assert line.split(': ')[-1] in (
      'cannot reach the store (network or DNS)',
      'access denied (credentials or permissions)', 'not found'), line


def test_records_past_the_checkpoint_resumed_from_are_made_again(tmp_path):
  # A kill after an epoch's record but before its checkpoint: the resumed
  # run evaluates that epoch again, and its record must not appear twice.
  (tmp_path / workdir_lib.METRICS).write_text(''.join(
      json.dumps({'step': step, 'epoch': step // 16}) + '\n'
      for step in (16, 32)))
  writer = metrics_file.MetricsFile()
  context = types.SimpleNamespace(workdir=str(tmp_path))  # All it reads.
  writer.start(context, step=20)
  writer.record(context, {'step': 32, 'epoch': 2, 'again': True})
  assert [json.loads(line) for line in (tmp_path / workdir_lib.METRICS)
          .read_text().splitlines()] == [{'step': 16, 'epoch': 1},
                                         {'step': 32, 'epoch': 2,
                                          'again': True}]


def test_a_torn_last_metrics_line_is_dropped_and_made_again(tmp_path, caplog):
  train.train_and_evaluate(_dense(**{'train.epochs': 2}), str(tmp_path))
  path = tmp_path / workdir_lib.METRICS
  complete = path.read_text()
  first, second = complete.splitlines(keepends=True)
  path.write_text(first + second[:30])  # As a writer stopped mid-line leaves.
  # The epoch of the torn record is trained again, from its checkpoint.
  caplog.set_level('WARNING')
  tf.io.gfile.remove(tf.train.latest_checkpoint(
      str(tmp_path / 'checkpoints')) + '.index')
  result = train.train_and_evaluate(_dense(**{'train.epochs': 2}),
                                    str(tmp_path))
  assert 'its last line is torn' in caplog.text
  assert [r['epoch'] for r in result.metrics] == [2]
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]


def _identity(pid):
  return workdir_lib._process_identity(pid)  # pylint: disable=protected-access


@pytest.mark.parametrize('holder', [
    # A container restarted in place: PID 1 again, as the holder was; here,
    # this very pid, which holds nothing yet.
    lambda: {'pid': os.getpid(), **_identity(os.getpid()),
             'process_start': _identity(os.getpid())['process_start'] - 1},
    # A live pid that another process took over since the holder died.
    lambda: {'pid': os.getppid(), **_identity(os.getppid()),
             'process_start': _identity(os.getppid())['process_start'] + 1},
    # This host, before its last restart.
    lambda: {'pid': os.getppid(), **_identity(os.getppid()),
             'boot_id': 'an-earlier-boot'},
], ids=['own-pid-restarted-in-place', 'pid-reused', 'host-rebooted'])
def test_a_dead_holder_is_told_from_a_live_process_with_its_pid(
    tmp_path, holder, caplog):
  _write_lock(tmp_path, **holder())
  caplog.set_level('WARNING')
  with workdir_lib.Lock(str(tmp_path)):
    taken = json.loads((tmp_path / workdir_lib.LOCK).read_text())
  assert (taken['pid'], taken['process_start']) == (
      os.getpid(), _identity(os.getpid())['process_start'])
  assert 'Taking over' in caplog.text


def test_a_live_holder_with_its_identity_is_respected(tmp_path):
  _write_lock(tmp_path, pid=os.getppid(), **_identity(os.getppid()))
  with pytest.raises(errors.WorkdirError,
                     match=f'in use by pid {os.getppid()}'):
    with workdir_lib.Lock(str(tmp_path)):
      pass


def _in_a_pid_namespace(*args) -> subprocess.Popen:
  """`python -m mnist_dist.main ARGS` as PID 1 of a new PID namespace, on
  this host's name: a container's trainer, as Kubernetes and Vertex AI run
  it. Returns the process of `unshare`, whose one child is the trainer."""
  return subprocess.Popen(
      ['unshare', '--pid', '--fork', '--mount-proc', sys.executable, '-m',
       'mnist_dist.main', *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # Two trainers.
@pytest.mark.skipif(not shutil.which('unshare') or os.geteuid() != 0,
                    reason='needs root and unshare (util-linux)')
def test_a_trainer_restarted_in_place_resumes(tmp_path):
  args = (f'--workdir={tmp_path}', *_SMALL, '--config.train.epochs=40',
          '--config.checkpoint.every_steps=8')
  first = _in_a_pid_namespace(*args)
  checkpoints = tmp_path / workdir_lib.CHECKPOINTS
  for line in first.stderr:
    if 'step ' in line and tf.train.latest_checkpoint(str(checkpoints)):
      break
  (trainer,) = (int(pid) for pid in subprocess.run(
      ['pgrep', '-P', str(first.pid)], capture_output=True, text=True,
      check=True).stdout.split())
  os.kill(trainer, signal.SIGKILL)  # PID 1 of its namespace: all of it.
  first.communicate(timeout=60)
  assert json.loads((tmp_path / workdir_lib.LOCK).read_text())['pid'] == 1
  second = _in_a_pid_namespace(*args)
  _, stderr = second.communicate(timeout=600)
  assert second.returncode == 0, stderr[-3000:]
  assert 'Resuming from' in stderr and 'Taking over' in stderr
  assert not (tmp_path / workdir_lib.LOCK).exists()


# --- A resumed run's changed values (issue 33, item 10) ----------------------


def _flat_keys(config_dict, prefix=''):
  for key, value in config_dict.items():
    if isinstance(value, dict):
      yield from _flat_keys(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


def test_every_config_key_says_what_a_resume_may_change():
  lists = (workdir_lib.RUN_DEFINING_KEYS, workdir_lib.TRAINING_KEYS,
           workdir_lib.FREE_KEYS)
  classified = [key for keys in lists for key in keys]
  assert len(classified) == len(set(classified))  # Each in one list only.
  # small_config: config.default_config with other values, the same keys.
  assert sorted(classified) == sorted(_flat_keys(
      json.loads(small_config().to_json())))


def _history(workdir):
  path = workdir / workdir_lib.CONFIG_HISTORY
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()]


_COSINE = {'optimizer.schedule': 'cosine'}  # Its shape is train.epochs'.


def test_a_resume_that_changes_training_is_refused_naming_each(tmp_path):
  workdir_lib.check_and_record_config(small_config(_COSINE), str(tmp_path),
                                      write=True)
  recorded = (tmp_path / workdir_lib.CONFIG).read_text()
  changed = small_config({**_COSINE, 'train.epochs': 3,
                          'optimizer.learning_rate': 0.1,
                          'outputs.plots': True})
  with pytest.raises(errors.WorkdirError) as refusal:
    workdir_lib.check_and_record_config(changed, str(tmp_path), write=True)
  message = str(refusal.value)
  assert '\n' not in message
  assert 'train.epochs: 1 -> 3; optimizer.learning_rate: 0.01 -> 0.1' in (
      message)
  assert '--config.resume.accept_changes=True' in message
  assert 'outputs.plots' not in message  # Free.
  assert (tmp_path / workdir_lib.CONFIG).read_text() == recorded
  assert not _history(tmp_path)


def test_accepted_changes_are_recorded_in_the_history(tmp_path):
  workdir_lib.check_and_record_config(small_config(_COSINE), str(tmp_path),
                                      write=True)
  changed = {**_COSINE, 'train.epochs': 3, 'optimizer.learning_rate': 0.1}
  workdir_lib.check_and_record_config(
      small_config({**changed, 'resume.accept_changes': True}),
      str(tmp_path), write=True)
  assert workdir_lib.read_config(str(tmp_path)).train.epochs == 3
  (record,) = _history(tmp_path)
  assert record['changed'] == {'train.epochs': [1, 3],
                               'optimizer.learning_rate': [0.01, 0.1]}
  assert record['time']
  # The next start, without the flag, resumes the run as it now is.
  workdir_lib.check_and_record_config(small_config(changed), str(tmp_path),
                                      write=True)
  assert len(_history(tmp_path)) == 1  # The flag itself is no change.


def test_a_change_of_an_output_passes_and_is_recorded(tmp_path):
  workdir_lib.check_and_record_config(small_config(), str(tmp_path),
                                      write=True)
  # More epochs too: the exponential schedule does not depend on them.
  workdir_lib.check_and_record_config(
      small_config({'outputs.plots': True, 'checkpoint.keep': 5,
                    'train.epochs': 4}), str(tmp_path), write=True)
  assert [r['changed'] for r in _history(tmp_path)] == [
      {'checkpoint.keep': [3, 5], 'outputs.plots': [False, True],
       'train.epochs': [1, 4]}]


def test_a_trainer_resuming_with_another_schedule_is_refused(tmp_path):
  train.train_and_evaluate(_dense(**_COSINE), str(tmp_path))
  with pytest.raises(errors.WorkdirError,
                     match=r'train.epochs: 1 -> 2\)'):
    train.train_and_evaluate(_dense(**_COSINE, **{'train.epochs': 2}),
                             str(tmp_path))
  longer = train.train_and_evaluate(
      _dense(**_COSINE, **{'train.epochs': 2, 'resume.accept_changes': True}),
      str(tmp_path))
  assert [r['epoch'] for r in longer.metrics] == [2]  # Trained on.
  assert [r['changed'] for r in _history(tmp_path)] == [
      {'train.epochs': [1, 2]}]
