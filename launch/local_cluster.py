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
  to every worker, the cluster saves one checkpoint and stops, and this exits
  75 (a second one is passed on too: the workers exit at once).
- All workers exiting 75 (any worker was signalled: they stop together) is a
  clean stop, and so exits 75.
- Any other failure of a worker (killed, exit 76 after losing a peer, an
  error) stops the others: SIGTERM, then SIGKILL after --grace_s.
- --max_restarts=N relaunches the whole cluster, up to N times, after a stop
  that was not asked of this launcher (a lost or preempted worker), so a run
  survives a lost worker unattended; each relaunch resumes from the chief's
  last checkpoint. With --min_workers below --workers, workers that were lost
  (killed) are treated as machines that do not come back: the relaunch uses
  the survivors, never fewer than --min_workers (the run continues on fewer
  replicas: the global batch, and so the result, stays the same).

Exits 0 when the run finished; 75 when it stopped cleanly; 76 when a worker
was lost (killed, or exited 76), which relaunching resumes from; otherwise the
code of the first worker that failed (128+N for one killed by signal N).
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # The checkout's mnist_dist, which the workers run.
from mnist_dist import errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKERS = flags.DEFINE_integer('workers', 2, 'Number of worker processes.')
_GRACE_S = flags.DEFINE_float(
    'grace_s', 30.0, 'Seconds the other workers get to stop on their own, '
    'and then after SIGTERM, before they are killed, once a worker failed.')
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

  def __init__(self, trainer_args: list[str], *, workers: int):
    addresses = [f'127.0.0.1:{port}' for port in free_ports(workers)]
    self.processes, self._relays = [], []
    self._stopped_by_us = set()
    for index in range(workers):
      env = dict(os.environ, TF_CONFIG=tf_config(addresses, index))
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

  def running(self) -> list[int]:
    return [i for i, p in enumerate(self.processes) if p.poll() is None]

  def signal_all(self, signum: int) -> None:
    for index in self.running():
      self._stopped_by_us.add(index)
      self.processes[index].send_signal(signum)

  def _wait(self, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while self.running() and time.monotonic() < deadline:
      time.sleep(0.1)

  def stop(self, grace_s: float) -> None:
    """Gives the rest grace_s to end on their own, then SIGTERM, then SIGKILL."""
    self._wait(grace_s)
    if self.running():
      say(f'stopping workers {self.running()} (SIGTERM)')
      self.signal_all(signal.SIGTERM)
      self._wait(grace_s)
    if self.running():
      say(f'killing workers {self.running()} (SIGKILL)')
      self.signal_all(signal.SIGKILL)
    for process in self.processes:
      process.wait()

  def supervise(self, grace_s: float, asked: threading.Event) -> Outcome:
    """Waits for the workers; stops them all once one fails."""
    while self.running():
      failed = [i for i, p in enumerate(self.processes)
                if p.returncode not in (None, 0, errors.EXIT_INTERRUPTED)]
      if failed:
        say(f'worker {failed[0]} exited with code '
            f'{exit_code(self.processes[failed[0]].returncode)}: stopping '
            'the cluster')
        self.stop(grace_s)
        break
      if len(self.running()) < len(self.processes) and not asked.is_set():
        # Some stopped cleanly (75): the rest are saving, or will fail.
        self._wait(grace_s)
        if self.running():
          self.stop(grace_s)
        break
      time.sleep(0.2)
    for relay in self._relays:
      relay.join()
    return self._outcome(asked.is_set())

  def _outcome(self, asked: bool) -> Outcome:
    codes = [exit_code(p.returncode) for p in self.processes]
    lost = [i for i, p in enumerate(self.processes)
            if p.returncode < 0 and i not in self._stopped_by_us]
    for index in lost:
      say(f'worker {index} was lost: killed by '
          f'{signal.Signals(-self.processes[index].returncode).name}')
    failures = [i for i, code in enumerate(codes)
                if code not in (0, errors.EXIT_INTERRUPTED)]
    if not failures:
      code = errors.EXIT_INTERRUPTED if errors.EXIT_INTERRUPTED in codes else 0
    elif lost:
      code = errors.EXIT_WORKER_LOST  # Retryable: relaunching resumes.
    else:
      code = codes[failures[0]]
    return Outcome(code=code, lost=lost, asked=asked)


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
      current[0].signal_all(signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)

  restarts = 0
  while True:
    current[:] = [Cluster(trainer_args, workers=workers)]
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
