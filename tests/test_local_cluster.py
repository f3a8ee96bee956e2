"""The local launcher's decisions and the chaos schedule, without a cluster:
what the outcome of a launch is, from why its workers ended; which faults a
seed deals; what ties the workers to the launcher, and holds their ports, on
stand-in processes. (tests/test_cluster.py, test_launcher_orphans.py and
test_chaos.py run real clusters.)"""

import errno
import os
import signal
import socket
import subprocess
import sys
import time

from absl import flags
import pytest

from helpers import launch_script
from helpers import ROOT
from mnist_dist.base import errors
from mnist_dist.distribution import cluster


local_cluster = launch_script('local_cluster')
for _name in ('workers', 'max_restarts'):  # Both scripts define them.
  delattr(flags.FLAGS, _name)
chaos = launch_script('chaos')
Ending = local_cluster.Ending
KILLED = -signal.SIGKILL
TERMINATED = -signal.SIGTERM
LOST, STOPPED = errors.EXIT_WORKER_LOST, errors.EXIT_INTERRUPTED


@pytest.mark.parametrize('endings, code', [
    # A kill this launcher did not send is a loss, and explains the exits 76
    # of the peers that noticed it.
    ([Ending(1, KILLED, stopped_by_us=False),
      Ending(0, LOST, stopped_by_us=False)], LOST),
    # A worker declared gone on missed heartbeats: everyone exits 76.
    ([Ending(0, LOST, stopped_by_us=False),
      Ending(2, LOST, stopped_by_us=False)], LOST),
    # A preempted worker's SIGTERM, not ours: the cluster saved and stopped.
    ([Ending(1, STOPPED, stopped_by_us=False)], STOPPED),
    # A SIGTERM nobody handled (a worker still starting): lost, retryable.
    ([Ending(2, TERMINATED, stopped_by_us=False)], LOST),
    # A failure of the run itself is not retried, even if a peer lost it
    # meanwhile.
    ([Ending(0, LOST, stopped_by_us=False),
      Ending(1, errors.EXIT_BAD_INPUT, stopped_by_us=False)],
     errors.EXIT_BAD_INPUT),
    ([Ending(0, 0, stopped_by_us=False)], 0),
])
def test_the_first_endings_decide_the_outcome(endings, code):
  assert local_cluster._deciding(endings) == code


def test_workers_the_launcher_stopped_do_not_decide():
  # What the issue saw: a worker declared gone, the rest stopped by the
  # launcher (143, or 128+N after a second signal), and the launch ended 143.
  stopped = [Ending(1, TERMINATED, stopped_by_us=True),
             Ending(2, 128 + signal.SIGTERM, stopped_by_us=True),
             Ending(0, KILLED, stopped_by_us=True)]
  assert all(ending.cause is None for ending in stopped)
  assert not any(ending.lost for ending in stopped)
  assert local_cluster._deciding(
      [Ending(0, LOST, stopped_by_us=False), *stopped]) == LOST
  assert str(stopped[0]) == 'worker 1 stopped by the launcher (SIGTERM)'
  assert str(Ending(2, KILLED, stopped_by_us=False)) == (
      'worker 2 was lost: killed by SIGKILL')


@pytest.mark.parametrize('code, asked, retryable', [
    (LOST, False, True), (STOPPED, False, True), (LOST, True, False),
    (errors.EXIT_BAD_INPUT, False, False), (0, False, False)])
def test_only_unasked_stops_and_losses_are_retried(code, asked, retryable):
  outcome = local_cluster.Outcome(code=code, lost=[], asked=asked)
  assert outcome.retryable == retryable


# What a survivor's broadcast raised when worker 2 was SIGKILLed while the
# model's variables were broadcast (3 workers on loopback): its own device
# comes first in the message, the lost task after.
_BROADCAST_ERROR = (
    '{{function_node __wrapped__CollectiveBcastRecv_device_/job:worker/'
    'replica:0/task:1/device:CPU:0}} Collective ops is aborted by: Error '
    'reported from /job:worker/task:2: The following tasks are unhealthy '
    '(stopped sending heartbeats):\n/job:worker/replica:0/task:2\nThe tasks '
    'have crashed. [Op:CollectiveBcastRecv]')
_CLUSTER = {'worker': ['127.0.0.1:1000', '127.0.0.1:1001', '127.0.0.1:1002']}


def test_the_lost_worker_is_named_not_the_survivors_own_device():
  assert cluster._peer_name(_BROADCAST_ERROR, _CLUSTER,
                            own=('worker', 1)) == 'worker 2 (127.0.0.1:1002)'
  # The task the health check names wins over a peer merely mentioned first.
  assert cluster._peer_name(
      'from remote target /job:worker/replica:0/task:0 while calling '
      'CompleteGroup: The following tasks are unhealthy (stopped sending '
      'heartbeats):\n/job:worker/replica:0/task:2', _CLUSTER,
      own=('worker', 1)) == 'worker 2 (127.0.0.1:1002)'
  assert cluster._peer_name('Socket closed to 127.0.0.1:1000', _CLUSTER,
                            own=('worker', 1)) == 'worker 0 (127.0.0.1:1000)'
  assert cluster._peer_name('no task', _CLUSTER, own=None) == 'a worker'


def test_a_seed_deals_the_same_faults_and_start_up_is_included():
  first = chaos.schedule(7, faults=40, workers=3, within_s=20.0)
  assert first == chaos.schedule(7, faults=40, workers=3, within_s=20.0)
  assert first != chaos.schedule(8, faults=40, workers=3, within_s=20.0)
  assert {fault.signum for fault in first} == {signal.SIGKILL, signal.SIGTERM}
  assert {fault.worker for fault in first} == {0, 1, 2}
  assert min(fault.after_s for fault in first) < 3.0  # While starting.
  launches = [fault.launch for fault in first]
  assert launches == sorted(launches) and launches[0] == 0
  assert len(set(launches)) < len(launches)  # Some strike the same launch.


def test_sighup_stops_the_cluster_unless_ignored_as_under_nohup():
  previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
  try:
    assert signal.SIGHUP in local_cluster.stop_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    assert local_cluster.stop_signals() == [signal.SIGINT, signal.SIGTERM]
  finally:
    signal.signal(signal.SIGHUP, previous)


def test_held_ports_admit_only_listeners_that_share_them():
  (held,) = local_cluster.hold_ports(1)
  port = held.getsockname()[1]
  with held:
    for host in ('127.0.0.1', '0.0.0.0'):  # Another process, even so.
      with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as refused:
          other.bind((host, port))
        assert refused.value.errno == errno.EADDRINUSE
    # What a worker's gRPC server does with TF_GRPC_REUSE_PORT; the held
    # socket, never listening, takes none of its connections.
    with socket.socket() as server:
      server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      server.bind(('0.0.0.0', port))
      server.listen()
      with socket.create_connection(('127.0.0.1', port)):
        server.accept()[0].close()


def _assert_gone(pid: int, within_s: float) -> None:
  """Asserts that pid (not a child of this process) exits within_s."""
  deadline = time.monotonic() + within_s
  while os.path.exists(f'/proc/{pid}'):
    with open(f'/proc/{pid}/stat') as f:
      if f.read().rsplit(')', 1)[1].split()[0] == 'Z':  # Exited.
        return
    assert time.monotonic() < deadline, f'pid {pid} still runs'
    time.sleep(0.05)


_TIED = pytest.mark.skipif(not local_cluster.TIED,
                           reason='workers are tied to the launcher on Linux')

# A worker that says when it gets SIGTERM, then exits.
_SAYS_SIGTERM = """
import signal, sys, time
def stop(signum, frame):
  print('SIGTERM', flush=True)
  sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print('started', flush=True)
time.sleep(60)
"""

# A launcher that starts that worker as the real one does, says its pid, and
# waits to be killed.
_LAUNCHER = """
import subprocess, sys, time
sys.path.insert(0, {launch!r})
import local_cluster
worker = subprocess.Popen(local_cluster.worker_command(
    [sys.executable, '-c', {worker!r}]), start_new_session=True)
print(worker.pid, flush=True)
time.sleep(60)
"""


@_TIED
def test_a_worker_gets_sigterm_when_its_launcher_dies():
  script = _LAUNCHER.format(launch=os.path.join(ROOT, 'launch'),
                            worker=_SAYS_SIGTERM)
  launcher = subprocess.Popen([sys.executable, '-c', script],
                              stdout=subprocess.PIPE, text=True)
  worker = int(launcher.stdout.readline())
  assert launcher.stdout.readline() == 'started\n'  # Tied, and running.
  launcher.kill()
  launcher.wait()
  assert launcher.stdout.readline() == 'SIGTERM\n'
  _assert_gone(worker, within_s=5)


@_TIED
def test_a_worker_whose_launcher_died_before_it_was_tied_ends():
  command = local_cluster.worker_command([sys.executable, '-c', _SAYS_SIGTERM])
  # As if the launcher had died between the fork and the worker's prctl:
  # the worker's parent (this process) is not the launcher named.
  command[command.index(str(os.getpid()))] = '0'
  worker = subprocess.run(command, capture_output=True, text=True,
                          timeout=30, check=False)
  assert worker.returncode == -signal.SIGTERM and not worker.stdout


# TensorFlow's hold on SIGTERM while a worker joins the cluster, as seen
# from outside: the signal changes nothing.
_DEAF = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('started', flush=True)
time.sleep(60)
"""


@_TIED
def test_the_keeper_stops_what_the_launcher_left(tmp_path):
  phase_dir = tmp_path / 'phases'
  phase_dir.mkdir()
  (phase_dir / 'worker-1').write_text('training')
  workers = [subprocess.Popen([sys.executable, '-c', _DEAF],
                              stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
  for worker in workers:
    assert worker.stdout.readline() == 'started\n'
  with local_cluster.Keeper(grace_s=3.0, phase_dir=str(phase_dir)) as keeper:
    for index, worker in enumerate(workers):
      keeper.watch(worker.pid, str(phase_dir / f'worker-{index}'))
  started = time.monotonic()
  # Gone with the launcher's end of the socket: nothing to save kills at
  # once, training after the grace period.
  assert workers[0].wait(timeout=3) == -signal.SIGKILL
  assert time.monotonic() - started < 1.5
  assert workers[1].wait(timeout=10) == -signal.SIGKILL
  assert time.monotonic() - started >= 3.0
  assert keeper.process.wait(timeout=5) == 0
  assert not phase_dir.exists()
