"""The local launcher's hold on its workers and their ports, on real clusters.

Its workers never outlive it: killed (SIGKILL) while they train or while one
waits to join the cluster, or hung up on (SIGHUP) with its output closed, as
when a terminal closes. No other process can take a worker's port between the
launcher's choice and the worker's bind. (The mechanisms alone, on stand-in
processes, are in test_local_cluster.py.)
"""

import codecs
import errno
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from helpers import CLUSTER_RUN
from helpers import LAUNCHER
from helpers import launch_script
from helpers import ROOT
from mnist_dist.base import errors

# Real clusters of worker processes: 5 to 20 s each.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not launch_script('local_cluster').TIED,
                       reason='workers are tied to the launcher on Linux')]

# Long enough (20 s or more) that workers left running would still be
# training when the test looks.
_LONG = '--config.train.epochs=30'


class Launch:
  """The launcher in a session of its own, its output read as it comes."""

  def __init__(self, workdir, *launcher_flags, trainer_flags=()):
    self.process = subprocess.Popen(
        [sys.executable, LAUNCHER, '--workers=2', *launcher_flags,
         '--', f'--workdir={workdir}', *CLUSTER_RUN, *trainer_flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    self.output = ''
    self._hung_up = threading.Event()
    self._reader = threading.Thread(target=self._read)
    self._reader.start()

  def _read(self):
    decoder = codecs.getincrementaldecoder('utf-8')()
    fd = self.process.stdout.fileno()
    while not self._hung_up.is_set():
      if select.select([fd], [], [], 0.05)[0]:
        data = os.read(fd, 65536)
        if not data:
          break
        self.output += decoder.decode(data)
    self.process.stdout.close()

  def hang_up(self) -> None:
    """Closes the launcher's output, as a closed terminal does."""
    self._hung_up.set()
    self._reader.join()

  def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      match = re.search(pattern, self.output, re.MULTILINE)
      if match:
        return match
      assert self.process.poll() is None, self.output[-3000:]
      time.sleep(0.02)
    raise AssertionError(f'no {pattern!r} in:\n{self.output[-3000:]}')

  def worker(self, index: int) -> tuple[int, int]:
    """Worker index's pid and port, once the launcher has started it."""
    match = self.wait_for(
        rf'^\[launcher\] worker {index}: pid (\d+), 127\.0\.0\.1:(\d+)$')
    return int(match[1]), int(match[2])

  def mid_run(self) -> None:
    """Waits until the chief has logged step 8 or later of epoch 1."""
    self.wait_for(r'^\[worker 0\] .*step ([89]|[1-9]\d)/')

  def finish(self, timeout: float = 120) -> int:
    self.process.wait(timeout=timeout)
    self._reader.join()
    return self.process.returncode


@pytest.fixture
def launches():
  """Launch(...) for the test; what it leaves running is killed after it."""
  started = []

  def launch(workdir, *args, **kwargs):
    started.append((workdir, Launch(workdir, *args, **kwargs)))
    return started[-1][1]

  yield launch
  for workdir, each in started:
    _kill_all_of(workdir)
    each.finish()


def _kill_all_of(workdir) -> None:
  """Kills every process that runs with --workdir=workdir (the launcher and
  its workers, wherever they are), found by its command line, which no
  later process with a reused pid has."""
  flag = f'--workdir={workdir}'.encode()
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if flag in f.read().split(b'\0'):
          os.kill(int(pid), signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
      pass


def _running(pid: int) -> bool:
  """Whether pid (not a child of this process) has not exited yet."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


def _assert_all_gone(pids: list[int], within_s: float) -> None:
  deadline = time.monotonic() + within_s
  while any(map(_running, pids)):
    assert time.monotonic() < deadline, (
        f'still running {within_s:g} s after the launcher: '
        f'{[pid for pid in pids if _running(pid)]}')
    time.sleep(0.05)


def test_training_workers_stop_with_a_killed_launcher(tmp_path, launches):
  # Its SIGTERM from the kernel: each stops at once, well within the 30 s
  # after which the keeper would kill it.
  launch = launches(tmp_path, trainer_flags=[_LONG])
  pids = [launch.worker(index)[0] for index in (0, 1)]
  launch.mid_run()
  os.kill(launch.process.pid, signal.SIGKILL)
  _assert_all_gone(pids, within_s=10)


def test_a_worker_joining_the_cluster_stops_with_a_killed_launcher(
    tmp_path, launches):
  # Worker 1 stopped (SIGSTOP) before it joins: worker 0 waits in the join,
  # where TensorFlow holds SIGTERM, and worker 1 cannot act on any signal
  # but SIGKILL. Neither has anything to save: the keeper kills both at
  # once, not after the grace period.
  launch = launches(tmp_path, '--grace_s=60', trainer_flags=[_LONG])
  chief, port = launch.worker(0)
  other, _ = launch.worker(1)
  os.kill(other, signal.SIGSTOP)
  deadline = time.monotonic() + 60
  while True:  # Until worker 0's gRPC server is up: it is joining.
    try:
      socket.create_connection(('127.0.0.1', port)).close()
      break
    except ConnectionRefusedError:
      assert time.monotonic() < deadline, launch.output[-3000:]
      time.sleep(0.1)
  time.sleep(1)
  os.kill(launch.process.pid, signal.SIGKILL)
  _assert_all_gone([chief, other], within_s=5)


@pytest.mark.parametrize('hung_up', [False, True],
                         ids=['output open', 'output closed'])
def test_sighup_stops_the_cluster_and_the_relaunch_resumes(
    tmp_path, launches, hung_up):
  launch = launches(tmp_path)
  launch.mid_run()
  if hung_up:
    launch.hang_up()
  os.kill(launch.process.pid, signal.SIGHUP)
  assert launch.finish() == errors.EXIT_INTERRUPTED, launch.output[-3000:]
  if not hung_up:
    output = launch.output
    assert ('[launcher] SIGHUP: passing it on to the workers as SIGTERM'
            in output)
    stops = re.findall(r'^\[worker (\d)\] stopped: SIGTERM at step (\d+)',
                       output, re.MULTILINE)
    assert sorted(worker for worker, _ in stops) == ['0', '1'], output
    assert len({step for _, step in stops}) == 1, stops  # Together.
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  relaunch = launches(tmp_path)
  assert relaunch.finish() == 0, relaunch.output[-3000:]
  assert 'Resuming from' in relaunch.output


def test_a_workers_port_cannot_be_taken_before_it_binds_it(tmp_path,
                                                           launches):
  launch = launches(tmp_path, trainer_flags=['--config.train.epochs=1'])
  _, port = launch.worker(1)
  # At once, while worker 1 still loads TensorFlow, as another program
  # choosing the same port would.
  with socket.socket() as squatter:
    with pytest.raises(OSError) as refused:
      squatter.bind(('127.0.0.1', port))
    assert refused.value.errno == errno.EADDRINUSE
  assert launch.finish() == 0, launch.output[-3000:]
