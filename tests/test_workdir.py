"""The workdir: written whole, held by one trainer, finished idempotently."""

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
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
  temporary = workdir_lib.temporary_name(path)
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
