"""Multi-worker training through launch/local_cluster.py, and its failures.

Every test runs a real cluster of `mnist_dist.main` processes on loopback
ports, stops it the way a cloud does (a signal to one worker, a worker killed
without warning, Ctrl-C to the launcher) and then proves the state it left by
continuing from it.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import assert_same_run
from helpers import checkpoint_variables
from helpers import CLUSTER_RUN
from helpers import LAUNCHER
from helpers import launch_script
from helpers import ROOT
from helpers import run_main
from mnist_dist.base import errors

# Real clusters of worker processes: 10 to 50 s each.
pytestmark = pytest.mark.slow

_STEPS_PER_EPOCH = 64


class Launch:
  """The launcher in a process of its own, its output read as it comes."""

  def __init__(self, workdir, *launcher_flags, trainer_flags=()):
    self.process = subprocess.Popen(
        [sys.executable, LAUNCHER, '--workers=2', *launcher_flags,
         '--', f'--workdir={workdir}', *CLUSTER_RUN, *trainer_flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # Its own group, as a terminal gives it.
    self.lines = []
    self._reader = threading.Thread(target=self._read)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)

  @property
  def output(self) -> str:
    return ''.join(self.lines)

  def wait_for(self, pattern: str, timeout: float = 180) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      match = re.search(pattern, self.output, re.MULTILINE)
      if match:
        return match
      assert self.process.poll() is None, self.output[-3000:]
      time.sleep(0.05)
    raise AssertionError(f'no {pattern!r} in:\n{self.output[-3000:]}')

  def pid(self, worker: int) -> int:
    return int(self.wait_for(rf'\[launcher\] worker {worker}: pid (\d+)')[1])

  def mid_run(self) -> None:
    """Waits until the chief has logged step 8 or later of epoch 1."""
    self.wait_for(r'^\[worker 0\] .*step ([89]|[1-9]\d)/')

  def finish(self, timeout: float = 300) -> int:
    self.process.wait(timeout=timeout)
    self._reader.join()
    return self.process.returncode


def _latest_step(workdir) -> int:
  path = tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))
  return int(path.rsplit('-', 1)[1])


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The workdir of a 2-worker run that nothing stopped."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  launch = Launch(workdir)
  assert launch.finish() == 0, launch.output[-3000:]
  return workdir


def _stop_one_worker(workdir, worker: int, signum: int) -> int:
  """Signals one worker mid-epoch; checks that all stopped together.

  Returns the step they stopped at.
  """
  launch = Launch(workdir)
  pid = launch.pid(worker)
  launch.mid_run()
  os.kill(pid, signum)
  code = launch.finish()
  output = launch.output
  assert code == errors.EXIT_INTERRUPTED, output[-3000:]
  stops = re.findall(r'\[worker (\d)\] stopped: (.*)', output)
  assert sorted(w for w, _ in stops) == ['0', '1'], output[-3000:]
  steps = {int(re.search(r'at step (\d+)', line)[1]) for _, line in stops}
  assert len(steps) == 1, stops  # The same step on every worker.
  (step,) = steps
  assert step % _STEPS_PER_EPOCH, 'stopped at an epoch end, not mid-epoch'
  # Only the chief says it saved; its checkpoint is the stop step's.
  said_saved = [w for w, line in stops if 'checkpoint saved' in line]
  assert said_saved == ['0'], stops
  assert _latest_step(workdir) == step
  assert 'Traceback' not in output
  return step


@pytest.mark.parametrize('worker', [1, 0], ids=['non-chief', 'chief'])
def test_a_signalled_worker_stops_all_and_the_relaunch_resumes(
    tmp_path, uninterrupted, worker):
  _stop_one_worker(tmp_path, worker, signal.SIGTERM)
  relaunch = Launch(tmp_path)
  assert relaunch.finish() == 0, relaunch.output[-3000:]
  assert 'Resuming from' in relaunch.output
  assert_same_run(tmp_path, uninterrupted, epochs=2)


def test_a_cluster_stopped_on_two_workers_finishes_on_one(tmp_path,
                                                          uninterrupted):
  _stop_one_worker(tmp_path, 1, signal.SIGINT)
  single = run_main(f'--workdir={tmp_path}', *CLUSTER_RUN)
  assert single.returncode == 0, single.stderr[-3000:]
  assert re.search(r'topology changed: the checkpoint was saved on 2 workers, '
                   r'2 replicas, this run has 1 worker, 1 replica',
                   single.stderr), single.stderr[-3000:]
  assert_same_run(tmp_path, uninterrupted, epochs=2)


@pytest.mark.parametrize('worker', [1, 0], ids=['non-chief', 'chief'])
def test_a_killed_worker_ends_the_others_with_one_line(tmp_path, worker):
  # TensorFlow's 10 s heartbeat timeout, not the CPU default of 30 s: a
  # survivor that notices a loss by the heartbeats does so well within 60 s.
  launch = Launch(tmp_path, '--grace_s=60', trainer_flags=[
      '--config.checkpoint.every_steps=8',
      '--config.distribution.heartbeat_timeout_s=10'])
  pid = launch.pid(worker)
  launch.wait_for(r'^\[worker 0\] .*Saved checkpoint')
  os.kill(pid, signal.SIGKILL)
  # The survivor notices the lost peer itself: the launcher's grace period
  # (60 s) is longer than the whole wait allowed here.
  assert launch.finish(timeout=60) == errors.EXIT_WORKER_LOST, (
      launch.output[-3000:])
  survivor = 1 - worker
  output = launch.output
  named = re.search(rf'\[worker {survivor}\] error: lost worker {worker} '
                    r'\(127\.0\.0\.1:\d+\) at step \d+; the last good '
                    r'checkpoint is \S*ckpt-(\d+)', output)
  assert named, output[-3000:]
  assert 'Traceback' not in output
  assert f'worker {worker} was lost: killed by SIGKILL' in output
  assert 'SIGTERM' not in output  # The survivor was not stopped by us.
  # The chief's checkpoints are intact: the one named is the newest, and
  # it reads.
  assert _latest_step(tmp_path) == int(named[1])
  assert checkpoint_variables(tmp_path)


# --min_workers=1: the killed worker counts as a machine that is gone, and
# the run finishes on the one left.
@pytest.mark.parametrize('min_workers, relaunched', [(2, 2), (1, 1)])
def test_max_restarts_survives_a_killed_worker(tmp_path, uninterrupted,
                                               min_workers, relaunched):
  launch = Launch(tmp_path, '--max_restarts=1', f'--min_workers={min_workers}')
  pid = launch.pid(1)
  launch.mid_run()
  os.kill(pid, signal.SIGKILL)
  assert launch.finish() == 0, launch.output[-3000:]
  assert (f'[launcher] restart 1/1: relaunching {relaunched} workers'
          in launch.output)
  assert_same_run(tmp_path, uninterrupted, epochs=2)


def test_ctrl_c_saves_one_checkpoint_and_exits_75(tmp_path):
  launch = Launch(tmp_path)
  launch.mid_run()
  before = len(launch.lines)
  os.killpg(launch.process.pid, signal.SIGINT)  # What a terminal's Ctrl-C does.
  assert launch.finish() == errors.EXIT_INTERRUPTED, launch.output[-3000:]
  after = ''.join(launch.lines[before:])
  # Each worker got the signal once (a second one would exit at once, 130).
  assert after.count('SIGINT received') == 2, after
  assert len(re.findall(r'Saved checkpoint', after)) == 1, after
  step = int(re.search(r'\[worker 0\] stopped: SIGINT at step (\d+)',
                       after)[1])
  assert _latest_step(tmp_path) == step
  assert 'killed' not in after and 'SIGKILL' not in after


def test_two_workers_match_one_process_over_two_devices(tmp_path, mnist_dir):
  # 468 steps of the dense config on the real MNIST, global batch 128.
  common = ['--config=configs/dense.py', f'--config.data.dir={mnist_dir}',
            '--config.train.epochs=1']
  cluster = subprocess.run(
      [sys.executable, LAUNCHER, '--workers=2', '--',
       f'--workdir={tmp_path / "cluster"}', *common], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=600, check=False)
  assert cluster.returncode == 0, cluster.stdout[-3000:]
  single = run_main(f'--workdir={tmp_path / "single"}', *common,
                    '--config.distribution.cpu_devices=2', timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  # The chief alone writes, and only the chief's progress is logged.
  assert sorted(os.listdir(tmp_path / 'cluster')) == [
      'checkpoints', 'config.json', 'export', 'metrics.jsonl', 'plots',
      'tensorboard']
  assert re.search(r'\[worker 0\] .*step 468/468', cluster.stdout)
  assert not re.search(r'\[worker 1\] .*step \d+/468', cluster.stdout)

  cluster_weights = checkpoint_variables(tmp_path / 'cluster')
  single_weights = checkpoint_variables(tmp_path / 'single')
  assert cluster_weights.keys() == single_weights.keys() and cluster_weights
  for name, value in single_weights.items():
    np.testing.assert_allclose(cluster_weights[name], value, rtol=1e-4,
                               atol=1e-6, err_msg=name)
  with open(tmp_path / 'cluster' / 'metrics.jsonl') as f:
    (cluster_record,) = [json.loads(line) for line in f]
  with open(tmp_path / 'single' / 'metrics.jsonl') as f:
    (single_record,) = [json.loads(line) for line in f]
  for key in ('train_loss', 'eval_loss', 'eval_accuracy', 'eval_examples'):
    assert cluster_record[key] == pytest.approx(single_record[key], rel=1e-5)


class Workers:
  """Workers started with TF_CONFIG and no launcher, as on N machines: what
  the survivors of a fault print and exit with is theirs alone."""

  def __init__(self, workdir, count: int, *trainer_flags):
    """workdir: the one all share, or a list of one per worker (as a
    workdir per host would be)."""
    local_cluster = launch_script('local_cluster')
    addresses = [f'127.0.0.1:{port}'
                 for port in local_cluster.free_ports(count)]
    workdirs = workdir if isinstance(workdir, list) else [workdir] * count
    self.processes, self._readers, self.lines = [], [], []
    for index in range(count):
      tf_config = local_cluster.tf_config(addresses, index)
      process = subprocess.Popen(
          [sys.executable, '-m', 'mnist_dist.main',
           f'--workdir={workdirs[index]}',
           *CLUSTER_RUN, '--config.distribution.strategy=multi_worker_mirrored',
           *trainer_flags], cwd=ROOT, env=dict(os.environ, TF_CONFIG=tf_config),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      reader = threading.Thread(target=self._read, args=(index, process))
      reader.start()
      self.processes.append(process)
      self._readers.append(reader)

  def _read(self, index, process):
    for line in process.stdout:
      self.lines.append(f'[worker {index}] {line}')

  @property
  def output(self) -> str:
    return ''.join(self.lines)

  def wait_for(self, pattern: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not re.search(pattern, self.output, re.MULTILINE):
      assert time.monotonic() < deadline, self.output[-3000:]
      time.sleep(0.02)

  def finish(self, timeout: float = 120) -> list[int]:
    for process in self.processes:
      process.wait(timeout=timeout)
    for reader in self._readers:
      reader.join()
    return [process.returncode for process in self.processes]


def _assert_one_line_each(output: str, survivors: list[int], says: str):
  for worker in survivors:
    lines = re.findall(rf'^\[worker {worker}\] error: (.*)$', output,
                       re.MULTILINE)
    assert len(lines) == 1 and re.match(says, lines[0]), output[-3000:]
  assert 'Traceback' not in output, output[-3000:]
  assert not re.search(r'\] [IWE]\d{4} ', output), output[-3000:]  # No C++.


def test_a_chief_gone_before_the_cluster_forms_is_one_line(tmp_path):
  workers = Workers(tmp_path, 3, '--config.distribution.join_timeout_s=10',
                    '--config.train.global_batch_size=96')
  workers.processes[0].kill()  # Still importing: it never joins.
  codes = workers.finish()
  assert codes[1:] == [errors.EXIT_WORKER_LOST] * 2, workers.output[-3000:]
  _assert_one_line_each(
      workers.output, [1, 2],
      r'the cluster could not form \(worker 0 \(127\.0\.0\.1:\d+\) is gone\); '
      r'the last good checkpoint is none')


def test_a_worker_that_never_joins_ends_the_others_join_with_one_line(
    tmp_path):
  # TensorFlow alone would wait an hour, deaf to SIGTERM.
  workers = Workers(tmp_path, 3, '--config.distribution.join_timeout_s=10',
                    '--config.train.global_batch_size=96')
  workers.processes[2].kill()
  codes = workers.finish()
  # The first to wait 10 s is killed by its watchdog; a peer still waiting
  # may see it go first (a slower start-up) and exit 76, a loss too: both
  # count as lost to a supervisor, and each says why in one line.
  says = {
      -signal.SIGKILL: r'the cluster could not form within 10 s \('
                       r'distribution.join_timeout_s\): not every worker '
                       r'joined; the last good checkpoint is none',
      errors.EXIT_WORKER_LOST: r'the cluster could not form \(worker \d '
                               r'\(127\.0\.0\.1:\d+\) is gone\); the last '
                               r'good checkpoint is none'}
  assert -signal.SIGKILL in codes[:2] and set(codes[:2]) <= set(says), (
      codes, workers.output[-3000:])
  for worker in (0, 1):
    _assert_one_line_each(workers.output, [worker], says[codes[worker]])


def test_a_worker_lost_while_the_model_is_built_is_one_line(tmp_path):
  # Killed as the strategy is created: the survivors lose it while building
  # the model and broadcasting its variables, before the first step.
  workers = Workers(tmp_path, 3, '--config.distribution.heartbeat_timeout_s=5',
                    '--config.train.global_batch_size=96')
  workers.wait_for(r'Strategy: ')
  workers.processes[2].kill()
  codes = workers.finish()
  assert codes[:2] == [errors.EXIT_WORKER_LOST] * 2, workers.output[-3000:]
  _assert_one_line_each(workers.output, [0, 1],
                        r'(lost worker \d \(127\.0\.0\.1:\d+\) (before the '
                        r'first step|at step \d+)|the cluster could not form)')


def test_a_loss_at_start_up_ends_the_launch_at_once(tmp_path):
  launch = Launch(tmp_path)
  pid = launch.pid(0)
  time.sleep(2)  # The others are importing TensorFlow, or joining.
  os.kill(pid, signal.SIGKILL)
  assert launch.finish(timeout=60) == errors.EXIT_WORKER_LOST, (
      launch.output[-3000:])
  output = launch.output
  assert 'worker 0 was lost: killed by SIGKILL' in output
  # Nothing to save yet: worker 1 killed at once, not after the 30 s grace
  # period, unless it saw the loss itself first (the cluster could not
  # form: exit 76), which the launcher then finds with the kill.
  assert re.search(r'killing workers \[1\] at once \(SIGKILL\): nothing to '
                   r'save|worker 1 exited 76 \(lost a peer\)', output), (
                       output[-3000:])
  assert 'after 30 s' not in output and 'Traceback' not in output


def test_a_worker_declared_gone_under_load_is_a_loss_the_retry_resumes(
    tmp_path, uninterrupted):
  # SIGSTOP: alive, but silent past the heartbeat timeout, as a worker
  # starved of CPU is. The cluster declares it gone; the launcher relaunches.
  launch = Launch(tmp_path, '--max_restarts=3', '--grace_s=10', trainer_flags=[
      '--config.distribution.heartbeat_timeout_s=3',
      '--config.checkpoint.every_steps=8'])
  pid = launch.pid(1)
  launch.wait_for(r'^\[worker 0\] .*Saved checkpoint')
  os.kill(pid, signal.SIGSTOP)
  assert launch.finish() == 0, launch.output[-3000:]
  output = launch.output
  assert re.search(r'\[worker 0\] error: lost worker 1 \(127\.0\.0\.1:\d+\) '
                   r'at step \d+; the last good checkpoint is \S+ckpt-\d+',
                   output), output[-3000:]
  assert '[launcher] restart 1/3' in output and 'Resuming from' in output
  assert 'Traceback' not in output
  assert_same_run(tmp_path, uninterrupted, epochs=2)


def test_workers_that_restored_different_steps_all_exit_2(tmp_path):
  # A workdir per host: the chief's holds a finished run (step 128), worker
  # 1's nothing. Continuing would give loops of different lengths: a hang,
  # or a chief that finishes alone.
  chief, other = tmp_path / 'host0', tmp_path / 'host1'
  made = run_main(f'--workdir={chief}', *CLUSTER_RUN, timeout=120)
  assert made.returncode == 0, made.stderr[-3000:]
  before = sorted(os.listdir(chief / 'checkpoints'))
  workers = Workers([chief, other], 2)
  assert workers.finish(timeout=60) == [errors.EXIT_BAD_INPUT] * 2, (
      workers.output[-3000:])
  says = (r'the workers restored different steps \(0 to 128; this one {}, '
          r'from .*host{}/checkpoints\): .*--workdir must be one folder '
          r'shared by all workers')
  for worker, step in ((0, 128), (1, 0)):
    _assert_one_line_each(workers.output, [worker], says.format(step, worker))
  assert sorted(os.listdir(chief / 'checkpoints')) == before
  assert not os.path.exists(other / 'metrics.jsonl')
