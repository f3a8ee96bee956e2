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
- **A lost worker is named, not a traceback, wherever it strikes.** A worker
  killed without warning (SIGKILL, out of memory, its machine gone) cannot
  vote. TensorFlow's collectives and its coordination service then fail on
  the survivors: at once where the peer's sockets close, or once the service
  misses its heartbeats (distribution.heartbeat_timeout_s); a worker that
  never joins fails the others' join after distribution.join_timeout_s.
  `peer_failures` wraps everything a worker does with the cluster, from
  creating the strategy to the export, and turns that error into
  `errors.WorkerLost`, which names the peer (or says the cluster could not
  form) and the last good checkpoint; the entry point prints one line and
  exits 76, and relaunching the cluster resumes from the chief's checkpoint.
  A worker declared gone while alive (starved of CPU past the timeout) is a
  loss like any other: every worker exits 76, and the relaunch resumes.
- **Every worker continues from the same step** (`check_restored`). Each
  restores from the workdir on its own; a workdir per host would give
  loops of different lengths, so a mismatch is refused on every worker.
- **A worker says whether it has anything to save** (`report_phase`), so a
  supervisor stops those that have not at once: before its first step a
  worker holds nothing the chief's checkpoint does not.

Who is in the run is read here too: the `topology` (workers and replicas)
and whether this process `is_chief`, the one that writes.
"""

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Callable

from absl import logging
import tensorflow as tf

from mnist_dist.base import workdir as workdir_lib
from mnist_dist.base.errors import CheckpointError
from mnist_dist.base.errors import WorkerLost
from mnist_dist.distribution import strategy as strategy_lib

SUM = tf.distribute.ReduceOp.SUM

# What a collective raises on the survivors when a peer is gone: Unavailable
# (sockets closed, or aborted by the health check), DeadlineExceeded (a peer
# that stopped answering), Cancelled or Aborted (a collective cut short), and
# FailedPrecondition (a peer that restarted meanwhile); a peer's only when
# the message says the cluster failed (`_said_by_the_cluster`).
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
  """The run's workers and replicas, as the strategy has them."""
  resolver = strategy.cluster_resolver
  workers = 1
  # TPUStrategy is one client process driving every host of a pod slice.
  if (resolver is not None and resolver.task_type and
      not isinstance(strategy, tf.distribute.TPUStrategy)):
    spec = resolver.cluster_spec().as_dict()
    workers = sum(len(spec.get(job, ())) for job in ('chief', 'worker'))
  return Topology(workers=workers, replicas=strategy.num_replicas_in_sync)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one worker that writes logs, metrics and exports."""
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type:
    return True
  return (resolver.task_type == 'chief' or
          (resolver.task_type == 'worker' and resolver.task_id == 0 and
           'chief' not in resolver.cluster_spec().as_dict()))


# A task as TensorFlow names it: /job:worker/replica:0/task:2 or
# /job:worker/task:2.
_TASK = r'/job:(\w+)/(?:replica:\d+/)?task:(\d+)'
# Where a message names the task at fault (the coordination service's
# health check, or the task that reported the error), before any other.
_AT_FAULT = (r'unhealthy[^/]*' + _TASK, r'reported from ' + _TASK)


def _peer_name(message: str, cluster: dict[str, list[str]], *,
               own: tuple[str, int] | None = None) -> str:
  """'worker 1 (host:port)' from what a failed collective says, if it can.

  cluster: {job: [address of each task]}, the cluster spec of TF_CONFIG.
  own: this process's (job, index), which the message also names (its own
  devices) but which is not the lost one.
  """
  tasks = [(m[1], int(m[2])) for pattern in _AT_FAULT
           for m in re.finditer(pattern, message)]
  tasks += [(m[1], int(m[2])) for m in re.finditer(_TASK, message)]
  for job, index in tasks:
    if (job, index) != own:
      addresses = cluster.get(job, [])
      address = f' ({addresses[index]})' if index < len(addresses) else ''
      return f'{job} {index}{address}'
  for job, addresses in cluster.items():
    for index, address in enumerate(addresses):
      if address in message and (job, index) != own:
        return f'{job} {index} ({address})'
  return 'a worker'


def _said_by_the_cluster(message: str, cluster: dict[str, list[str]], *,
                         own: tuple[str, int] | None) -> bool:
  """Whether a failure is the cluster's: a collective, the health check or
  a connection says so, or the message names another task (`_TASK`, or its
  address). The same kinds of error (Unavailable, DeadlineExceeded) also
  come from a store, which is this worker's own failure, not a lost peer."""
  lowered = message.lower()
  if any(sign in lowered for sign in workdir_lib.PEER_SIGNS):
    return True
  return _peer_name(message, cluster, own=own) != 'a worker'


def _tf_config_cluster(distribution_config):
  """({job: addresses}, this task) of a multi-worker run's TF_CONFIG, or
  ({}, None) for one process."""
  if strategy_lib.strategy_name(distribution_config) != (
      'multi_worker_mirrored'):
    return {}, None
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  spec = resolver.cluster_spec().as_dict()
  cluster = {job: list(tasks.values()) if isinstance(tasks, dict) else tasks
             for job, tasks in spec.items() if job in ('chief', 'worker')}
  if sum(map(len, cluster.values())) <= 1:
    return {}, None
  return cluster, (resolver.task_type, resolver.task_id)


@dataclasses.dataclass
class Whereabouts:
  """How far this worker got: what the line of a lost peer says."""
  formed: bool = False  # The cluster formed: the strategy was created.
  # The last step trained (or restored); None before the run is built.
  step_of: Callable[[], int] | None = None


@contextlib.contextmanager
def peer_failures(distribution_config, *, checkpoint_dir: str):
  """Turns a failure over a lost peer, wherever it strikes, into WorkerLost.

  Yields a Whereabouts for the caller to keep up to date. Around everything a
  worker does with the cluster: joining it (creating the strategy), the
  variables' first broadcast, training, evaluation, checkpoints, the export.
  checkpoint_dir: the chief's checkpoints, whose newest the message names.
  Only multi-worker runs: in one process these errors are bugs, not peers.
  """
  whereabouts = Whereabouts()
  cluster, own = _tf_config_cluster(distribution_config)
  if not cluster:
    yield whereabouts
    return
  try:
    yield whereabouts
  except _PEER_ERRORS as e:
    if not _said_by_the_cluster(str(e), cluster, own=own):
      raise  # Not a peer's: this worker's own (storage is one line upstream).
    peer = _peer_name(str(e), cluster, own=own)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if not whereabouts.formed:
      raise WorkerLost.before_forming(peer, latest) from e
    raise WorkerLost(peer, whereabouts.step_of and whereabouts.step_of(),
                     latest) from e


# Run by `joining` in a process of its own: waits for its stdin to close (the
# join ended) for TIMEOUT seconds; past them, says so and kills the worker.
_JOIN_WATCHDOG = """
import os, select, signal, sys
parent, timeout, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout)[0]:
  sys.stderr.write(line + chr(10))
  sys.stderr.flush()
  os.kill(parent, signal.SIGKILL)
"""
# After join_timeout_s TensorFlow's own error comes first where it has one.
_JOIN_GRACE_S = 5.0


@contextlib.contextmanager
def joining(distribution_config, *, checkpoint_dir: str):
  """Bounds the wait for every worker to join, to distribution.join_timeout_s.

  TensorFlow waits an hour for a worker that never comes (a fixed timeout of
  its coordination service), and holds Python's lock meanwhile, so no thread
  or signal handler of this process can act: a watchdog process ends it, with
  the one line, and the kill makes a supervisor count it as lost. When the
  chief itself is gone, TensorFlow gives up first (the same timeout, through
  the coordination service), and `peer_failures` names it.

  Once joined, SIGTERM ends the worker at once until training starts
  (`_sigterm_as_before`).
  """
  cluster, _ = _tf_config_cluster(distribution_config)
  if not cluster:
    yield
    return
  timeout_s = distribution_config.join_timeout_s
  latest = tf.train.latest_checkpoint(checkpoint_dir)
  line = 'error: ' + str(WorkerLost(
      'a worker', None, latest, what=(
          f'the cluster could not form within {timeout_s:g} s '
          '(distribution.join_timeout_s): not every worker joined')))
  watchdog = subprocess.Popen(
      [sys.executable, '-c', _JOIN_WATCHDOG, str(os.getpid()),
       str(timeout_s + _JOIN_GRACE_S), line], stdin=subprocess.PIPE)
  on_sigterm = signal.getsignal(signal.SIGTERM)
  try:
    yield
  finally:
    watchdog.stdin.close()  # Joined, or failed: either way, done waiting.
    watchdog.wait()
  _sigterm_as_before(on_sigterm)


# Set by a supervisor (launch/local_cluster.py): where this worker says
# whether it has state to save, so that a stop kills at once the workers
# that have none. SIGTERM cannot stop a worker joining the cluster:
# TensorFlow catches it there (its preemption notifier) and holds Python.
PHASE_FILE_VAR = 'MNIST_DIST_PHASE_FILE'


def report_phase(phase: str) -> None:
  """'training' (a stop must let it save) or 'finishing' (the outputs,
  which the next start makes again): written whole, for the supervisor."""
  path = os.environ.get(PHASE_FILE_VAR)
  if path:
    workdir_lib.write_atomically(path, phase)


def _sigterm_as_before(handler) -> None:
  """SIGTERM handled again as before the cluster formed.

  Creating a multi-worker strategy installs TensorFlow's SIGTERM handler
  (its preemption notifier), which only records the signal: a preempted
  worker would go on building, then hold the cluster up. Before the first
  step there is nothing to save, so the command's stop (`cli.Stopped`, one
  line and exit 75), or the default action, is right.
  """
  if threading.current_thread() is threading.main_thread():
    # None: one installed outside Python, which cannot be put back.
    signal.signal(signal.SIGTERM, handler or signal.SIG_DFL)


class StopVote:
  """vote(asked) -> True when any worker asked to stop; a collective.

  Every worker must vote at the same points of the run, as with any
  collective; one process (any strategy) needs no all-reduce.
  """

  def __init__(self, strategy: tf.distribute.Strategy):
    self._strategy = strategy
    self._multi_worker = topology(strategy).workers > 1

    # No Python control flow to convert; AutoGraph warns that it cannot
    # convert this closure on some runs.
    @tf.function(autograph=False)
    def all_reduce(flag):
      per_replica = strategy.run(tf.identity, args=(flag,))
      return strategy.reduce(SUM, per_replica, axis=None)

    self._all_reduce = all_reduce

  def __call__(self, asked: bool) -> bool:
    if not self._multi_worker:
      return asked
    return bool(self._all_reduce(tf.constant(float(asked))).numpy() > 0)


def check_restored(strategy: tf.distribute.Strategy, *, step: int,
                   saved_on: tf.Variable | None, checkpoints: str) -> None:
  """Refuses a start whose workers restored different steps; a collective.

  Each worker restores on its own, from what it sees as WORKDIR/checkpoints,
  and all must continue from the same step, or their loops differ in
  length: a hang, or replicas that silently diverge. A workdir per host
  does that, and so does a host that sees another newest checkpoint. Every
  worker learns every worker's step (one small all-gather, before the first
  step) and raises CheckpointError on a mismatch, so all exit 2 together.
  One process has nothing to compare: no collective.

  step: the step this worker restored (0 for none). saved_on: the restored
  checkpoint's [workers, replicas] (`trainable.Counters.topology`), or None
  when nothing was restored: another topology than this run's is safe (the
  examples of global batch k depend on (seed, k) only), and logged.
  checkpoints: where this worker restored from, for the message.
  """
  this_run = topology(strategy)
  if saved_on is not None:
    saved = Topology(*(int(n) for n in saved_on.numpy()))
    if saved != this_run:
      logging.warning('The topology changed: the checkpoint was saved on %s, '
                      'this run has %s.', saved, this_run)
  if this_run.workers == 1:
    return

  @tf.function(autograph=False)
  def all_gather(value):
    per_replica = strategy.run(lambda v: v[None], args=(value,))
    return strategy.gather(per_replica, axis=0)

  # float64: exact for any step count (a TPU, which lacks it, is one
  # process: see topology).
  steps = all_gather(tf.constant(float(step), tf.float64)).numpy()
  if steps.min() != steps.max():
    raise CheckpointError(
        f'the workers restored different steps ({steps.min():.0f} to '
        f'{steps.max():.0f}; this one {step}, from {checkpoints}): every '
        'worker must resume from the same checkpoints, so --workdir must be '
        'one folder shared by all workers (gs:// or a shared file system), '
        'not one per host')
