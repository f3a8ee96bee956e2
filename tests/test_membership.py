"""Who is in a run, as `cluster` reads it from the strategy: the topology
(workers and replicas) and the chief, the one process that writes; and what
joining a cluster leaves for the build that follows."""

import json
import signal
import types

import ml_collections
import pytest
import tensorflow as tf

from mnist_dist.distribution import cluster


def _strategy(task_type=None, task_id=0, spec=None, replicas=1):
  """What cluster reads of a strategy: its cluster resolver and replicas."""
  resolver = None
  if spec is not None:
    resolver = types.SimpleNamespace(
        task_type=task_type, task_id=task_id,
        cluster_spec=lambda: tf.train.ClusterSpec(spec))
  return types.SimpleNamespace(cluster_resolver=resolver,
                               num_replicas_in_sync=replicas)


_TWO_WORKERS = {'worker': ['a:1', 'b:1']}
_CHIEF_AND_WORKER = {'chief': ['a:1'], 'worker': ['b:1']}


@pytest.mark.parametrize('strategy,chief,workers', [
    (_strategy(replicas=2), True, 1),  # One process: Mirrored, OneDevice.
    (_strategy('worker', 0, _TWO_WORKERS), True, 2),  # Worker 0, no chief job.
    (_strategy('worker', 1, _TWO_WORKERS), False, 2),
    (_strategy('chief', 0, _CHIEF_AND_WORKER), True, 2),
    (_strategy('worker', 0, _CHIEF_AND_WORKER), False, 2),
])
def test_the_chief_and_the_workers(strategy, chief, workers):
  assert cluster.is_chief(strategy) is chief
  assert cluster.topology(strategy) == cluster.Topology(
      workers=workers, replicas=strategy.num_replicas_in_sync)


def test_one_process_of_a_real_strategy_is_the_chief_of_one_worker():
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  assert cluster.is_chief(strategy)
  assert str(cluster.topology(strategy)) == '1 worker, 1 replica'


def test_a_joined_worker_stops_at_sigterm_until_it_trains(tmp_path,
                                                          monkeypatch):
  # TensorFlow's preemption notifier, which creating a multi-worker strategy
  # installs, would only record the signal: a worker with nothing to save
  # yet must stop, as the command does anywhere else (cli.stop_on_signals).
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['localhost:1', 'localhost:2']},
      'task': {'type': 'worker', 'index': 0}}))
  distribution = ml_collections.ConfigDict({
      'strategy': 'multi_worker_mirrored', 'join_timeout_s': 60.0})

  def the_commands(signum, frame):
    del signum, frame

  previous = signal.signal(signal.SIGTERM, the_commands)
  try:
    with cluster.joining(distribution, checkpoint_dir=str(tmp_path)):
      # Where the strategy is created, and TensorFlow's handler installed.
      signal.signal(signal.SIGTERM, lambda signum, frame: None)
    assert signal.getsignal(signal.SIGTERM) is the_commands
  finally:
    signal.signal(signal.SIGTERM, previous)
