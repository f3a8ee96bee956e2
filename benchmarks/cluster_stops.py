r"""How fast a local cluster stops: a signal to one worker, or one killed.

  python -m benchmarks.cluster_stops --repeats=3

For each case, runs `launch/local_cluster.py` with 2 workers training
`dense` on synthetic data, waits until the chief has logged step 40, then
signals one worker and times, from the signal, until every other worker has
exited (read from /proc, so the launcher's own polling adds nothing):
  SIGTERM to worker N   every worker votes to stop, saves, exits 75;
  SIGKILL to worker N   the survivors notice the lost peer and exit 76.
Prints one line per case: the exit codes and the times of each repeat.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs per case.')
_WORKERS = flags.DEFINE_integer('workers', 2, 'Workers in the cluster.')

from benchmarks.runner import ROOT
_TRAINER = ('--config=configs/dense.py', '--config.data.source=synthetic',
            '--config.train.epochs=50', '--config.train.steps_per_loop=20',
            '--config.outputs.tensorboard=False',
            '--config.outputs.saved_model=False',
            '--config.outputs.plots=False')
CASES = [(signal.SIGTERM, 1), (signal.SIGTERM, 0), (signal.SIGKILL, 1),
         (signal.SIGKILL, 0)]


def _exited(pid: int) -> bool:
  """True once pid has exited (a zombie not yet reaped counts)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
  except FileNotFoundError:
    return True


def stop_once(signum: int, worker: int, workdir: str) -> tuple[float, int]:
  """Seconds from the signal until the others exited; the launcher's code."""
  launcher = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'launch', 'local_cluster.py'),
       f'--workers={_WORKERS.value}', '--', f'--workdir={workdir}', *_TRAINER],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  pids = {}
  for line in launcher.stdout:
    started = re.match(r'\[launcher\] worker (\d+): pid (\d+)', line)
    if started:
      pids[int(started[1])] = int(started[2])
    if re.match(r'\[worker 0\] .*step ([4-9]\d|\d{3,})/', line):
      break
  sent = time.monotonic()
  os.kill(pids[worker], signum)
  others = [pid for index, pid in pids.items() if index != worker]
  while not all(_exited(pid) for pid in others):
    time.sleep(0.01)
  seconds = time.monotonic() - sent
  launcher.communicate(timeout=120)
  return seconds, launcher.returncode


def main(argv):
  del argv
  for signum, worker in CASES:
    results = []
    for repeat in range(_REPEATS.value):
      with tempfile.TemporaryDirectory() as workdir:
        results.append(stop_once(signum, worker, workdir))
    times = ', '.join(f'{seconds:.2f}' for seconds, _ in results)
    codes = sorted({code for _, code in results})
    print(f'{signal.Signals(signum).name} to worker {worker}: launcher exit '
          f'{codes}; others exited {times} s after the signal', flush=True)


if __name__ == '__main__':
  app.run(main)
