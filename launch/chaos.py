r"""Deals faults to a local cluster, as real clusters deal them, and reports.

  python launch/chaos.py --seed=7 --faults=3 --workers=3 --max_restarts=6 -- \
      --config=configs/dense.py --workdir=/tmp/chaos \
      --config.data.dir=../shared/mnist --config.train.global_batch_size=96

Runs `launch/local_cluster.py --workers=W --max_restarts=R` with the
trainer's flags after `--`, and deals --faults faults to it: each a SIGKILL
(a crash, a lost machine) or a SIGTERM (a preemption) to a random worker at a
random moment of a launch, from the first instant (the workers still
importing, or joining the cluster) to --within_s seconds into it. Usually
one fault a launch, so each relaunch meets a new one; sometimes a second in
the same launch half a second to two seconds after the first (a preemption
followed by a loss). The same --seed deals the same faults at the same
moments, so a failing run replays.

Every fault is retryable: the run must end as an uninterrupted one would
(the launcher resumes it from the chief's last checkpoint each time), which
tests/test_chaos.py checks. Prints `[chaos] ...` lines for the faults dealt
and one line at the end; exits with the launcher's code.
"""

import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

_SEED = flags.DEFINE_integer('seed', 0, 'Seeds where and when faults strike.')
_FAULTS = flags.DEFINE_integer('faults', 3, 'How many faults to deal.')
_WORKERS = flags.DEFINE_integer('workers', 3, 'Workers in the cluster.')
_MAX_RESTARTS = flags.DEFINE_integer(
    'max_restarts', None, "The launcher's --max_restarts (default: one more "
    'than --faults).')
_WITHIN_S = flags.DEFINE_float(
    'within_s', 20.0, 'A fault strikes 0 to this many seconds into a launch.')

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        'local_cluster.py')
_PID = re.compile(r'^\[launcher\] worker (\d+): pid (\d+)')


@dataclasses.dataclass(frozen=True)
class Fault:
  launch: int  # Which launch of the cluster (0: the first) it strikes.
  after_s: float  # Seconds after that launch's workers started.
  worker: int
  signum: int

  def __str__(self):
    return (f'{signal.Signals(self.signum).name} to worker {self.worker} '
            f'{self.after_s:.1f} s into launch {self.launch + 1}')


def schedule(seed: int, *, faults: int, workers: int,
             within_s: float) -> list[Fault]:
  """The faults a seed deals, in order."""
  rng = random.Random(seed)
  dealt, launch, after_s = [], -1, 0.0
  for _ in range(faults):
    if dealt and rng.random() < 0.25:  # Compound: the same launch, soon after.
      after_s += rng.uniform(0.5, 2.0)
    else:
      launch, after_s = launch + 1, rng.uniform(0.0, within_s)
    dealt.append(Fault(launch=launch, after_s=round(after_s, 2),
                       worker=rng.randrange(workers),
                       signum=rng.choice([signal.SIGKILL, signal.SIGTERM])))
  return dealt


def say(message: str) -> None:
  print(f'[chaos] {message}', flush=True)


class Launches:
  """The launcher's output, relayed, with each launch's worker pids."""

  def __init__(self, process: subprocess.Popen, *, workers: int):
    self._workers = workers
    self.starts: list[tuple[float, dict[int, int]]] = []  # (time, pids)
    self._lock = threading.Lock()
    self._reader = threading.Thread(target=self._read, args=(process,))
    self._reader.start()

  def _read(self, process):
    for line in process.stdout:
      sys.stdout.write(line)
      sys.stdout.flush()
      match = _PID.match(line)
      if match:
        worker, pid = int(match[1]), int(match[2])
        with self._lock:
          if worker == 0:
            self.starts.append((time.monotonic(), {}))
          self.starts[-1][1][worker] = pid

  def pid(self, fault: Fault) -> tuple[float, int] | None:
    """(when the fault's launch started, the pid it strikes), once known."""
    with self._lock:
      if len(self.starts) <= fault.launch:
        return None
      started, pids = self.starts[fault.launch]
      return (started, pids[fault.worker]) if len(pids) == self._workers \
          else None

  def join(self):
    self._reader.join()


def deal(faults: list[Fault], process: subprocess.Popen,
         launches: Launches) -> int:
  """Deals each fault at its moment; returns how many struck a worker."""
  struck = 0
  for fault in faults:
    while process.poll() is None and launches.pid(fault) is None:
      time.sleep(0.02)
    if process.poll() is not None:
      break
    started, pid = launches.pid(fault)
    time.sleep(max(0.0, started + fault.after_s - time.monotonic()))
    try:
      os.kill(pid, fault.signum)
      struck += 1
      say(f'{fault} (pid {pid})')
    except ProcessLookupError:
      say(f'{fault}: no such worker running, nothing dealt')
  return struck


def run(trainer_args: list[str], *, seed: int, faults: int, workers: int,
        max_restarts: int, within_s: float) -> int:
  planned = schedule(seed, faults=faults, workers=workers, within_s=within_s)
  say(f'seed {seed}: {"; ".join(map(str, planned))}')
  process = subprocess.Popen(
      [sys.executable, LAUNCHER, f'--workers={workers}',
       f'--max_restarts={max_restarts}', '--', *trainer_args],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  launches = Launches(process, workers=workers)
  struck = deal(planned, process, launches)
  code = process.wait()
  launches.join()
  say(f'seed {seed}: {struck} of {len(planned)} faults struck a worker, in '
      f'{len(launches.starts)} launches; the cluster exited {code}')
  return code


def main(argv):
  faults = _FAULTS.value
  sys.exit(run(argv[1:], seed=_SEED.value, faults=faults,
               workers=_WORKERS.value,
               max_restarts=(faults + 1 if _MAX_RESTARTS.value is None
                             else _MAX_RESTARTS.value),
               within_s=_WITHIN_S.value))


if __name__ == '__main__':
  app.run(main)
