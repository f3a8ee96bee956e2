"""Workers that stop together, and a lost worker that ends the run cleanly.

Under a multi-worker strategy every training step is an all-reduce across all
workers, so the workers must take the same steps: one that stops alone leaves
the others waiting in a collective that can never complete. Two rules follow.

- **A stop is voted on.** SIGTERM (a preemption notice, on every cloud this
  project runs on) or SIGINT reaches one worker, or some of them. At every
  loop boundary each worker contributes its flag to one small all-reduce
  (`StopVote`), so all learn of the request at the same step, save the same
  checkpoint together (the chief's copy is kept) and exit 75. The vote needs
  nothing of the platform, so it holds where TensorFlow's
  PreemptionCheckpointHandler does not (GCE TPU and CPU VMs).
- **A lost worker is named, not a traceback.** A worker killed without
  warning (SIGKILL, out of memory, its machine gone) cannot vote. TensorFlow's
  collectives then fail on the survivors: at once where the peer's sockets
  close (its process died), or once TensorFlow's coordination service misses
  its heartbeats (its machine went silent: 10 s, the service's default, which
  MultiWorkerMirroredStrategy starts with the cluster). `peer_failures` turns that
  error into `errors.WorkerLost`, which names the peer; the entry point prints one
  line and exits 76, and relaunching the cluster resumes from the chief's
  last checkpoint.
"""

import contextlib
import dataclasses
import re

import tensorflow as tf

from mnist_dist.errors import WorkerLost

SUM = tf.distribute.ReduceOp.SUM

# What a collective raises on the survivors when a peer is gone: Unavailable
# (sockets closed, or aborted by the health check), DeadlineExceeded (a peer
# that stopped answering), Cancelled or Aborted (a collective cut short), and
# FailedPrecondition (a peer that restarted meanwhile).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError,
                tf.errors.FailedPreconditionError)


@dataclasses.dataclass(frozen=True)
class Topology:
  """How many trainer processes and replicas a run trains on."""
  workers: int
  replicas: int

  def __str__(self):
    return (f'{self.workers} worker{"s" * (self.workers != 1)}, '
            f'{self.replicas} replica{"s" * (self.replicas != 1)}')


def topology(strategy: tf.distribute.Strategy) -> Topology:
  resolver = strategy.cluster_resolver
  workers = 1
  # TPUStrategy is one client process driving every host of a pod slice.
  if (resolver is not None and resolver.task_type and
      not isinstance(strategy, tf.distribute.TPUStrategy)):
    spec = resolver.cluster_spec().as_dict()
    workers = sum(len(spec.get(job, ())) for job in ('chief', 'worker'))
  return Topology(workers=workers, replicas=strategy.num_replicas_in_sync)


def _peer_name(message: str, cluster: dict[str, list[str]]) -> str:
  """'worker 1 (host:port)' from what a failed collective says, if it can.

  cluster: {job: [address of each task]}, the strategy's cluster spec.
  """
  task = re.search(r'/job:(\w+)/replica:\d+/task:(\d+)', message)
  if task:
    job, index = task.group(1), int(task.group(2))
    addresses = cluster.get(job, [])
    address = f' ({addresses[index]})' if index < len(addresses) else ''
    return f'{job} {index}{address}'
  for job, addresses in cluster.items():
    for index, address in enumerate(addresses):
      if address in message:
        return f'{job} {index} ({address})'
  return 'a worker'


@contextlib.contextmanager
def peer_failures(strategy: tf.distribute.Strategy, *, step_of,
                  checkpoint_dir: str):
  """Turns a collective's failure over a lost peer into WorkerLost.

  step_of: returns the last step this process completed, for the message.
  checkpoint_dir: the chief's checkpoints, whose newest the message names.
  Only multi-worker runs: in one process these errors are bugs, not peers.
  """
  if topology(strategy).workers == 1:
    yield
    return
  try:
    yield
  except _PEER_ERRORS as e:
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    raise WorkerLost(_peer_name(str(e), cluster), step_of(),
                     tf.train.latest_checkpoint(checkpoint_dir)) from e


class StopVote:
  """vote(asked) -> True when any worker asked to stop; a collective.

  Every worker must vote at the same points of the run, as with any
  collective; one process (any strategy) needs no all-reduce.
  """

  def __init__(self, strategy: tf.distribute.Strategy):
    self._strategy = strategy
    self._multi_worker = topology(strategy).workers > 1

    @tf.function
    def all_reduce(flag):
      per_replica = strategy.run(tf.identity, args=(flag,))
      return strategy.reduce(SUM, per_replica, axis=None)

    self._all_reduce = all_reduce

  def __call__(self, asked: bool) -> bool:
    if not self._multi_worker:
      return asked
    return bool(self._all_reduce(tf.constant(float(asked))).numpy() > 0)
