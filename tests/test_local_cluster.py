"""The local launcher's decisions and the chaos schedule, without a cluster:
what the outcome of a launch is, from why its workers ended; which faults a
seed deals. (tests/test_cluster.py and test_chaos.py run real clusters.)"""

import signal

from absl import flags
import pytest

from helpers import launch_script
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
