r"""Runs a multi-worker training cluster on this machine, and supervises it.

  python launch/local_cluster.py --workers=2 --max_restarts=3 -- \
      --config=configs/conv_bn.py --workdir=/tmp/cluster \
      --config.data.dir=../shared/mnist

Everything after `--` goes to every worker's `python -m mnist_dist.main`,
with `--config.distribution.strategy=multi_worker_mirrored` added. Each worker
gets its own TF_CONFIG (as TensorFlow defines it) naming all workers on free
loopback ports; worker 0 is the chief, which writes the logs, metrics.jsonl
and checkpoints. Each worker's output lines are prefixed with `[worker N]`.

A supervisor, as torchrun is for PyTorch:
- Each worker runs in a process group of its own, so a terminal's Ctrl-C
  reaches it once, through this launcher: SIGINT or SIGTERM here is passed on
  to every worker that is training; the cluster saves one checkpoint and
  stops, and this exits 75 (a second one is passed on too: the workers exit
  at once). Workers still starting have nothing to save and are killed.
- The outcome is decided by why the first workers ended on their own, never
  by the codes of workers this launcher stopped itself:
    killed by a signal it did not send   lost (a crash, OOM, a kill): 76
    exit 76                              it lost a peer (or the cluster could
                                         not form, or missed heartbeats): 76
    exit 75                              preempted: the cluster saved: 75
    exit 0                               the run finished: 0
    any other code (2 bad config, ...)   that code, not retried
- Once a worker failed, the others are stopped: those with nothing to save
  (still starting, or stuck joining the cluster: TensorFlow holds SIGTERM
  there) are killed at once, so a loss at start-up ends in seconds; those
  training get --grace_s to notice the loss themselves and exit 76 with the
  last good checkpoint, then are killed. A worker tells which it is in a file
  named by $MNIST_DIST_PHASE_FILE
  (`mnist_dist.distribution.cluster.report_phase`).
- --max_restarts=N relaunches the whole cluster, up to N times, after an
  outcome of 75 or 76 this launcher was not asked for, so a run survives lost
  and preempted workers unattended; each relaunch resumes from the chief's
  last checkpoint. With --min_workers below --workers, workers that were lost
  (killed) are treated as machines that do not come back: the relaunch uses
  the survivors, never fewer than --min_workers (the run continues on fewer
  replicas: the global batch, and so the result, stays the same).

Exits with the outcome above: 0 when the run finished, 75 when it stopped
cleanly (asked, or preempted with no restarts left), 76 when a worker was
lost and no restart was left, otherwise the code of the first worker that
failed on its own.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # The checkout's mnist_dist, which the workers run.
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from mnist_dist.base import errors

_WORKERS = flags.DEFINE_integer('workers', 2, 'Number of worker processes.')
_GRACE_S = flags.DEFINE_float(
    'grace_s', 30.0, 'Seconds the training workers get to stop on their '
    'own once a worker failed, before they are killed.')
_MAX_RESTARTS = flags.DEFINE_integer(
    'max_restarts', 0, 'Relaunches of the whole cluster after a stop this '
    'launcher was not asked for.')
_MIN_WORKERS = flags.DEFINE_integer(
    'min_workers', None, 'Relaunch without the workers that were killed, '
    'down to this many (default: --workers, always relaunch them all).')



def free_ports(count: int) -> list[int]:
  """Ports the OS says are free on 127.0.0.1 now."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def tf_config(addresses: list[str], index: int) -> str:
  return json.dumps({'cluster': {'worker': addresses},
                     'task': {'type': 'worker', 'index': index}})


def say(message: str) -> None:
  print(f'[launcher] {message}', flush=True)


def exit_code(returncode: int) -> int:
  """A worker's status as a shell reports it: 128+N for signal N."""
  return 128 - returncode if returncode < 0 else returncode


def _relay(prefix: str, stream) -> None:
  for line in stream:
    sys.stdout.write(f'{prefix}{line}')
    sys.stdout.flush()


@dataclasses.dataclass(frozen=True)
class Ending:
  """How one worker ended, and whether it says why the cluster ended."""
  worker: int
  returncode: int
  stopped_by_us: bool  # This launcher signalled it before it ended.

  @property
  def lost(self) -> bool:
    """Killed by a signal this launcher did not send."""
    return self.returncode < 0 and not self.stopped_by_us

  @property
  def cause(self) -> int | None:
    """The cluster's code this ending stands for, or None (stopped by us)."""
    if self.stopped_by_us:
      return None
    return errors.EXIT_WORKER_LOST if self.lost else self.returncode

  def __str__(self):
    code = exit_code(self.returncode)
    if self.returncode < 0:
      name = signal.Signals(-self.returncode).name
      return (f'worker {self.worker} was lost: killed by {name}' if self.lost
              else f'worker {self.worker} stopped by the launcher ({name})')
    meaning = {0: 'finished', errors.EXIT_INTERRUPTED: 'stopped, saved',
               errors.EXIT_WORKER_LOST: 'lost a peer'}.get(code, 'failed')
    by_us = ', stopped by the launcher' if self.stopped_by_us else ''
    return f'worker {self.worker} exited {code} ({meaning}{by_us})'


# Which of the causes seen at once decides: a kill explains the exits 76 it
# brings about, and a failure of the run itself (a bad config, a bug) is not
# retried even if peers lost it meanwhile.
_PRECEDENCE = (errors.EXIT_WORKER_LOST, errors.EXIT_INTERRUPTED, 0)


def _deciding(endings: list[Ending]) -> int | None:
  """The cluster's code from endings seen at once; None if none is a cause."""
  causes = [ending for ending in endings if ending.cause is not None]
  if not causes:
    return None
  if any(ending.lost for ending in causes):
    return errors.EXIT_WORKER_LOST
  failed = [e.cause for e in causes if e.cause not in _PRECEDENCE]
  if failed:
    return failed[0]
  return next(code for code in _PRECEDENCE
              if code in {e.cause for e in causes})


@dataclasses.dataclass
class Outcome:
  """How one launch of the cluster ended."""
  code: int  # The cluster's exit code.
  lost: list[int]  # Workers killed by a signal this launcher did not send.
  asked: bool  # This launcher was signalled: the user wants it to stop.

  @property
  def retryable(self) -> bool:
    return not self.asked and self.code in (errors.EXIT_INTERRUPTED,
                                            errors.EXIT_WORKER_LOST)


class Cluster:
  """One launch: the workers, their output relays, and how they ended."""

  def __init__(self, trainer_args: list[str], *, workers: int,
               phase_dir: str):
    addresses = [f'127.0.0.1:{port}' for port in free_ports(workers)]
    self.processes, self._relays, self._phase_files = [], [], []
    self._stopped_by_us = set()
    self._causes: list[Ending] = []  # The first endings on their own.
    for index in range(workers):
      phase_file = os.path.join(phase_dir, f'worker-{index}')
      env = dict(os.environ, TF_CONFIG=tf_config(addresses, index),
                 MNIST_DIST_PHASE_FILE=phase_file)
      process = subprocess.Popen(
          [sys.executable, '-m', 'mnist_dist.main', *trainer_args,
           '--config.distribution.strategy=multi_worker_mirrored'],
          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True, start_new_session=True)
      say(f'worker {index}: pid {process.pid}, {addresses[index]}')
      relay = threading.Thread(target=_relay,
                               args=(f'[worker {index}] ', process.stdout))
      relay.start()
      self.processes.append(process)
      self._relays.append(relay)
      self._phase_files.append(phase_file)

  def running(self) -> list[int]:
    return [i for i, p in enumerate(self.processes) if p.poll() is None]

  def training(self) -> list[int]:
    """The running workers that have state to save (`report_phase`)."""
    def phase(index):
      try:
        with open(self._phase_files[index]) as f:
          return f.read().strip()
      except FileNotFoundError:
        return 'starting'
    return [i for i in self.running() if phase(i) == 'training']

  def signal(self, workers: list[int], signum: int) -> None:
    for index in workers:
      if self.processes[index].poll() is None:
        self._stopped_by_us.add(index)
        self.processes[index].send_signal(signum)

  def _wait(self, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while self.running() and time.monotonic() < deadline:
      time.sleep(0.1)

  def stop(self, grace_s: float) -> None:
    """Kills the workers with nothing to save at once; gives the others
    grace_s to end on their own (they notice a lost peer themselves), then
    kills them."""
    idle = sorted(set(self.running()) - set(self.training()))
    if idle:
      say(f'killing workers {idle} at once (SIGKILL): nothing to save')
      self.signal(idle, signal.SIGKILL)
    self._wait(grace_s)
    if self.running():
      say(f'killing workers {self.running()} (SIGKILL) after {grace_s:g} s')
      self.signal(self.running(), signal.SIGKILL)
    for process in self.processes:
      process.wait()

  def _ended_on_their_own(self) -> list[Ending]:
    return [Ending(i, p.returncode, stopped_by_us=False)
            for i, p in enumerate(self.processes)
            if p.poll() is not None and i not in self._stopped_by_us]

  def supervise(self, grace_s: float, asked: threading.Event) -> Outcome:
    """Waits for the workers; stops them all once one fails."""
    while self.running():
      ended = self._ended_on_their_own()
      code = _deciding(ended)
      if code not in (None, 0) and not self._causes and not asked.is_set():
        self._causes = ended
        say(f'{"; ".join(map(str, ended))}: stopping the cluster')
        if code == errors.EXIT_INTERRUPTED:
          self._wait(grace_s)  # The others are saving the same step.
        self.stop(grace_s)
      time.sleep(0.1)
    for relay in self._relays:
      relay.join()
    return self._outcome(asked.is_set())

  def _outcome(self, asked: bool) -> Outcome:
    endings = [Ending(i, p.returncode, stopped_by_us=i in self._stopped_by_us)
               for i, p in enumerate(self.processes)]
    say('; '.join(map(str, endings)))
    code = _deciding(self._causes or endings)
    if code is None:  # Every worker was stopped by this launcher, as asked.
      code = errors.EXIT_INTERRUPTED
    if asked and code == errors.EXIT_WORKER_LOST:
      # Stopped as asked: the peers of those killed (nothing to save yet)
      # lost them.
      code = errors.EXIT_INTERRUPTED
    return Outcome(code=code, lost=[e.worker for e in endings if e.lost],
                   asked=asked)


def run_cluster(trainer_args: list[str], *, workers: int, grace_s: float,
                max_restarts: int = 0, min_workers: int | None = None) -> int:
  """Launches the cluster, relaunching it as allowed; returns its exit code."""
  asked = threading.Event()
  current: list[Cluster] = []

  def forward(signum, frame):
    del frame
    asked.set()
    say(f'{signal.Signals(signum).name}: passing it on to the workers')
    if current:
      cluster = current[0]
      idle = sorted(set(cluster.running()) - set(cluster.training()))
      cluster.signal(cluster.training(), signum)
      cluster.signal(idle, signal.SIGKILL)  # Nothing to save yet.

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)

  restarts = 0
  with tempfile.TemporaryDirectory(prefix='local_cluster_') as phase_dir:
    while True:
      current[:] = [Cluster(trainer_args, workers=workers,
                            phase_dir=tempfile.mkdtemp(dir=phase_dir))]
      outcome = current[0].supervise(grace_s, asked)
      if not outcome.retryable or restarts >= max_restarts:
        break
      restarts += 1
      if outcome.lost and min_workers is not None:
        workers = max(min_workers, workers - len(outcome.lost))
      say(f'restart {restarts}/{max_restarts}: relaunching {workers} '
          "workers, to resume from the chief's last checkpoint")
  say(f'cluster finished with exit code {outcome.code}')
  return outcome.code


def main(argv):
  if _MIN_WORKERS.value is not None and not (
      1 <= _MIN_WORKERS.value <= _WORKERS.value):
    raise app.UsageError('--min_workers must be between 1 and --workers')
  sys.exit(run_cluster(argv[1:], workers=_WORKERS.value,
                       grace_s=_GRACE_S.value,
                       max_restarts=_MAX_RESTARTS.value,
                       min_workers=_MIN_WORKERS.value))


if __name__ == '__main__':
  app.run(main)
