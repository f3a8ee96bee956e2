r"""Runs a multi-worker training cluster on this machine, and supervises it.

  python launch/local_cluster.py --workers=2 --max_restarts=3 -- \
      --config=configs/conv_bn.py --workdir=/tmp/cluster \
      --config.data.dir=../shared/mnist

Everything after `--` goes to every worker's `python -m mnist_dist.main`,
with `--config.distribution.strategy=multi_worker_mirrored` added. Each worker
gets its own TF_CONFIG (as TensorFlow defines it) naming all workers on
loopback ports; worker 0 is the chief, which writes the logs, metrics.jsonl
and checkpoints. Each worker's output lines are prefixed with `[worker N]`.

The ports are this launcher's from its choice until the launch ends: it holds
each in a socket bound with SO_REUSEPORT (never listening), and the workers'
gRPC servers bind them too (TF_GRPC_REUSE_PORT=true asks TensorFlow for
SO_REUSEPORT); no other process can bind one, or be given one by the kernel,
meanwhile, so a worker never finds its port taken.

A supervisor, as torchrun is for PyTorch:
- Each worker runs in a process group of its own, so a terminal's Ctrl-C
  reaches it once, through this launcher: SIGINT, SIGTERM or SIGHUP (the
  terminal closed; not under nohup) here is passed on to every worker that is
  training (SIGHUP as SIGTERM); the cluster saves one checkpoint and stops,
  and this exits 75 (a second one is passed on too: the workers exit at
  once). Workers still starting have nothing to save and are killed. Output
  that can no longer be written (the terminal gone) is dropped.
- Its workers never outlive it (on Linux), however it ends, SIGKILL
  included. Each asks the kernel for a SIGTERM when the launcher dies
  (PR_SET_PDEATHSIG, in a small wrapper that then becomes the trainer): a
  worker training saves and exits, one starting exits. A keeper process
  holding a pidfd of each worker kills those that have not ended once the
  launcher is gone: at once those with nothing to save (such as one joining
  the cluster, where TensorFlow holds SIGTERM), after --grace_s those
  training. Elsewhere the workers are started as they are, and may outlive a
  killed launcher.
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
    'own once a worker failed, or this launcher is gone, before they are '
    'killed.')
_MAX_RESTARTS = flags.DEFINE_integer(
    'max_restarts', 0, 'Relaunches of the whole cluster after a stop this '
    'launcher was not asked for.')
_MIN_WORKERS = flags.DEFINE_integer(
    'min_workers', None, 'Relaunch without the workers that were killed, '
    'down to this many (default: --workers, always relaunch them all).')


def _can_tie() -> bool:
  """Whether workers can be tied to this launcher: the kernel's parent-death
  signal (prctl PR_SET_PDEATHSIG) and the keeper's pidfds (Linux 5.3 or
  later: an older kernel refuses pidfd_open)."""
  if not sys.platform.startswith('linux') or not hasattr(os, 'pidfd_open'):
    return False
  try:
    os.close(os.pidfd_open(os.getpid()))
  except OSError:
    return False
  return True


TIED = _can_tie()

# Run by each worker before it becomes the trainer (exec: the same process)
# rather than in a preexec_fn, which would run the launcher's Python, with
# its signal handlers, in a child forked from a process with threads. Asks
# for SIGTERM when the launcher dies (PR_SET_PDEATHSIG, 1), and sends it
# itself if the launcher died before it asked.
_DIE_WITH_LAUNCHER = """
import ctypes, os, signal, sys
launcher, trainer = int(sys.argv[1]), sys.argv[2:]
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != launcher:
  os.kill(os.getpid(), signal.SIGTERM)
os.execv(trainer[0], trainer)
"""

# Run by `Keeper` in a process of its own: receives each worker's pidfd and
# phase file until the launcher's end of the socket closes (however it
# ended), then kills the workers left with nothing to save at once and the
# others after grace_s, and removes the phase files.
_KEEPER = """
import os, select, shutil, signal, socket, sys, time
grace_s, phase_dir = float(sys.argv[1]), sys.argv[2]
channel = socket.socket(fileno=0)
workers = []
while True:
  phase_file, pidfds, _, _ = socket.recv_fds(channel, 4096, 1)
  if not phase_file:
    break
  workers.append((pidfds[0], phase_file.decode()))

def training(phase_file):
  try:
    with open(phase_file) as f:
      return f.read().strip() == 'training'
  except OSError:
    return False

def kill(pidfd):
  try:
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
  except ProcessLookupError:
    pass

for pidfd, phase_file in workers:
  if not training(phase_file):
    kill(pidfd)
deadline = time.monotonic() + grace_s
for pidfd, _ in workers:
  select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
  kill(pidfd)
shutil.rmtree(phase_dir, ignore_errors=True)
"""


class Keeper:
  """A process that stops the workers once this launcher no longer does.

  The kernel's SIGTERM when the launcher dies (`_DIE_WITH_LAUNCHER`) stops
  a worker that trains (it saves) or starts, but not one joining the
  cluster (TensorFlow holds SIGTERM there: its preemption notifier only
  notes it) nor one stopped (SIGSTOP). The keeper holds a pidfd of each
  worker (unlike a pid, it never names a later process) and, once the
  launcher's end of their socket closes (exit, crash or SIGKILL alike),
  kills them as the launcher would: at once those with nothing to save,
  the others after grace_s. It runs in a session of its own, which a
  signal to the launcher's process group does not reach.

  Where the workers cannot be tied (not Linux), a Keeper does nothing.
  """

  def __init__(self, *, grace_s: float, phase_dir: str):
    self.process = None
    if not TIED:
      return
    self._channel, theirs = socket.socketpair(socket.AF_UNIX,
                                              socket.SOCK_SEQPACKET)
    with theirs:
      self.process = subprocess.Popen(
          [sys.executable, '-c', _KEEPER, str(grace_s), phase_dir],
          stdin=theirs, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL, start_new_session=True)

  def watch(self, pid: int, phase_file: str) -> None:
    """Hands over a worker, which must not have been waited for yet (its
    pid still names it)."""
    if self.process:
      pidfd = os.pidfd_open(pid)
      try:
        socket.send_fds(self._channel, [phase_file.encode()], [pidfd])
      finally:
        os.close(pidfd)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    """The launcher is done: whatever still runs is the keeper's to stop."""
    if self.process:
      self._channel.close()


def worker_command(trainer: list[str]) -> list[str]:
  """The command that runs trainer (an argv) as a worker of this launcher,
  tied to it where that works."""
  if not TIED:
    return trainer
  return [sys.executable, '-c', _DIE_WITH_LAUNCHER, str(os.getpid()),
          *trainer]


def hold_ports(count: int) -> list[socket.socket]:
  """Sockets bound to free ports on 127.0.0.1, which no other process can
  take while they are open.

  Bound with SO_REUSEPORT, never listening: the workers' gRPC servers bind
  the same ports with it too (TF_GRPC_REUSE_PORT, see `Cluster`), and only
  they accept connections there; anything else, binding or connecting from
  a port of the kernel's choice, is kept off them.
  """
  sockets = []
  for _ in range(count):
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(('127.0.0.1', 0))
    sockets.append(held)
  return sockets


def free_ports(count: int) -> list[int]:
  """Ports free on 127.0.0.1 now, released: for a caller that starts the
  processes binding them at once (another process may take one meanwhile;
  the launcher holds its own)."""
  sockets = hold_ports(count)
  ports = [held.getsockname()[1] for held in sockets]
  for held in sockets:
    held.close()
  return ports


def tf_config(addresses: list[str], index: int) -> str:
  return json.dumps({'cluster': {'worker': addresses},
                     'task': {'type': 'worker', 'index': index}})


def _write(text: str) -> None:
  """Writes to stdout while it is there. After a hang-up (SIGHUP: the
  terminal closed) or a closed pipe writes fail; the launcher must still
  drain its workers' output and stop them, and its exit code must stay
  theirs (not Python's 120 for an unflushed stdout): so stdout then goes to
  /dev/null."""
  try:
    sys.stdout.write(text)
    sys.stdout.flush()
  except OSError:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def say(message: str) -> None:
  _write(f'[launcher] {message}\n')


def exit_code(returncode: int) -> int:
  """A worker's status as a shell reports it: 128+N for signal N."""
  return 128 - returncode if returncode < 0 else returncode


def _relay(prefix: str, stream) -> None:
  for line in stream:
    _write(f'{prefix}{line}')


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
  """One launch: the workers, their output relays, and how they ended.

  Started from the main thread: the kernel's parent-death signal comes when
  the thread that forked a worker ends, not the process.
  """

  def __init__(self, trainer_args: list[str], *, workers: int,
               phase_dir: str, keeper: Keeper):
    # Held until the workers end. The gRPC servers share them only with
    # TF_GRPC_REUSE_PORT (TensorFlow's switch for SO_REUSEPORT).
    self._ports = hold_ports(workers)
    addresses = [f'127.0.0.1:{held.getsockname()[1]}' for held in self._ports]
    self.processes, self._relays, self._phase_files = [], [], []
    self._stopped_by_us = set()
    self._causes: list[Ending] = []  # The first endings on their own.
    for index in range(workers):
      phase_file = os.path.join(phase_dir, f'worker-{index}')
      env = dict(os.environ, TF_CONFIG=tf_config(addresses, index),
                 TF_GRPC_REUSE_PORT='true', MNIST_DIST_PHASE_FILE=phase_file)
      process = subprocess.Popen(
          worker_command(
              [sys.executable, '-m', 'mnist_dist.main', *trainer_args,
               '--config.distribution.strategy=multi_worker_mirrored']),
          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True, start_new_session=True)
      keeper.watch(process.pid, phase_file)
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
    for held in self._ports:
      held.close()
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


# What each signal to the launcher becomes for the training workers. SIGHUP
# (the terminal closed) is a stop like SIGTERM: left to its default, it
# would end the launcher and orphan the workers.
_PASSED_ON = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM,
              signal.SIGHUP: signal.SIGTERM}


def stop_signals() -> list[signal.Signals]:
  """The signals that stop the cluster: SIGHUP not where it is ignored, as
  under nohup, which asks the run to outlive its terminal."""
  return [signum for signum in _PASSED_ON
          if signum != signal.SIGHUP
          or signal.getsignal(signum) != signal.SIG_IGN]


def run_cluster(trainer_args: list[str], *, workers: int, grace_s: float,
                max_restarts: int = 0, min_workers: int | None = None) -> int:
  """Launches the cluster, relaunching it as allowed; returns its exit code."""
  asked = threading.Event()
  current: list[Cluster] = []

  def forward(signum, frame):
    del frame
    asked.set()
    passed = _PASSED_ON[signum]
    say(f'{signal.Signals(signum).name}: passing it on to the workers'
        + ('' if passed == signum else f' as {passed.name}'))
    if current:
      cluster = current[0]
      idle = sorted(set(cluster.running()) - set(cluster.training()))
      cluster.signal(cluster.training(), passed)
      cluster.signal(idle, signal.SIGKILL)  # Nothing to save yet.

  for signum in stop_signals():
    signal.signal(signum, forward)

  restarts = 0
  with (tempfile.TemporaryDirectory(prefix='local_cluster_') as phase_dir,
        Keeper(grace_s=grace_s, phase_dir=phase_dir) as keeper):
    while True:
      current[:] = [Cluster(trainer_args, workers=workers,
                            phase_dir=tempfile.mkdtemp(dir=phase_dir),
                            keeper=keeper)]
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
