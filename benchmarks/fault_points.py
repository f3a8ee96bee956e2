r"""Where a fault strikes a 3-worker cluster, what the survivors say, how fast
it stops.

  python -m benchmarks.fault_points            # through launch/local_cluster.py
  python -m benchmarks.fault_points --direct   # workers alone, as on N machines

For each fault point below, starts 3 workers training `dense` on synthetic
data (2 epochs of 85 steps, the SavedModel exported at the end), waits for
the moment, deals the fault, and prints one row: the point, each worker's
exit code, the seconds from the fault until the last worker (or the
launcher) exited, and the one `error:` line each survivor printed ('-' if
it printed none: the launcher killed it at once, having nothing to save).
Tracebacks and TensorFlow C++ lines, if any, are counted.
"""

import dataclasses
import functools
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

from benchmarks.runner import ROOT

LAUNCHER = os.path.join(ROOT, 'launch', 'local_cluster.py')

_DIRECT = flags.DEFINE_bool('direct', False, 'Start the workers with '
                            'TF_CONFIG and no launcher.')
_POINTS = flags.DEFINE_list('points', [], 'Only these points (default: all).')

_TRAINER = ('--config=configs/dense.py', '--config.data.source=synthetic',
            '--config.data.synthetic_train_examples=8160',
            '--config.data.synthetic_eval_examples=1000',
            '--config.train.global_batch_size=96', '--config.train.epochs=2',
            '--config.train.steps_per_loop=4',
            '--config.outputs.tensorboard=False',
            '--config.outputs.plots=False')


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  after: str  # A regex of the output to wait for ('' : the launch itself).
  delay_s: float  # Then this long.
  worker: int
  signum: int = signal.SIGKILL


POINTS = (
    # The chief, before it joins: the others wait for a service that never
    # comes. Then a worker before it joins: the others wait for it.
    Point('importing', '', 1.0, 0),
    Point('joining', '', 1.0, 2),
    Point('building', r'\[worker 0\] .*Strategy: ', 0.0, 2),
    Point('training', r'\[worker 0\] .*step (2\d|3\d)/', 0.0, 2),
    Point('evaluation', r'\[worker 0\] .*step 8[0-4]/', 0.05, 1),
    Point('checkpoint', r'\[worker 0\] .*eval epoch 1:', 0.0, 1),
    Point('export', r'\[worker 0\] .*eval epoch 2:', 0.1, 2),
    Point('silent', r'\[worker 0\] .*step (2\d|3\d)/', 0.0, 1, signal.SIGSTOP),
)


@functools.cache
def _launcher():
  """launch/local_cluster.py as a module, once (it defines absl flags): its
  free ports and TF_CONFIG."""
  spec = importlib.util.spec_from_file_location('local_cluster', LAUNCHER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Output:
  """Lines of several processes, read as they come."""

  def __init__(self):
    self.lines, self._threads = [], []

  def read(self, stream, prefix: str = ''):
    def pump():
      for line in stream:
        self.lines.append(prefix + line)
    thread = threading.Thread(target=pump)
    thread.start()
    self._threads.append(thread)

  @property
  def text(self) -> str:
    return ''.join(self.lines)

  def join(self):
    for thread in self._threads:
      thread.join()


def _start(workdir: str, *, direct: bool, output: Output):
  """(the processes to wait for, the workers' pids)."""
  trainer = [f'--workdir={workdir}', *_TRAINER]
  if not direct:
    launcher = subprocess.Popen(
        [sys.executable, LAUNCHER, '--workers=3', '--', *trainer], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output.read(launcher.stdout)
    while len(re.findall(r'\[launcher\] worker \d: pid', output.text)) < 3:
      time.sleep(0.01)
    pids = [int(p) for p in re.findall(r'\[launcher\] worker \d: pid (\d+)',
                                       output.text)]
    return [launcher], pids
  local_cluster = _launcher()
  addresses = [f'127.0.0.1:{port}' for port in local_cluster.free_ports(3)]
  processes = []
  for index in range(3):
    tf_config = local_cluster.tf_config(addresses, index)
    process = subprocess.Popen(
        [sys.executable, '-m', 'mnist_dist.main', *trainer,
         '--config.distribution.strategy=multi_worker_mirrored',
         '--config.distribution.join_timeout_s=30'],
        cwd=ROOT, env=dict(os.environ, TF_CONFIG=tf_config),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output.read(process.stdout, f'[worker {index}] ')
    processes.append(process)
  return processes, [p.pid for p in processes]


def strike(point: Point, *, direct: bool) -> str:
  output = Output()
  with tempfile.TemporaryDirectory() as workdir:
    processes, pids = _start(workdir, direct=direct, output=output)
    while point.after and not re.search(point.after, output.text):
      time.sleep(0.01)
    time.sleep(point.delay_s)
    struck = time.monotonic()
    os.kill(pids[point.worker], point.signum)
    survivors = [p for p in processes if p.pid != pids[point.worker]]
    deadline = struck + 180
    while any(p.poll() is None for p in survivors):
      if time.monotonic() > deadline:
        for p in survivors:
          p.kill()
      time.sleep(0.01)
    seconds = time.monotonic() - struck
    if direct and point.signum == signal.SIGSTOP:
      os.kill(pids[point.worker], signal.SIGKILL)  # Still stopped.
    for p in processes:
      p.wait()
    output.join()
  text = output.text
  said = {w: line for w, line in re.findall(r'\[worker (\d)\] error: (.*)',
                                            text)}
  codes = (re.search(r'cluster finished with exit code (\d+)', text)[1]
           if not direct else [p.returncode for p in processes])
  lines = '; '.join(f'worker {w}: {line[:110]}' for w, line in
                    sorted(said.items())) or '-'
  return (f'| {point.name} | {signal.Signals(point.signum).name} to worker '
          f'{point.worker} | {codes} | {seconds:.1f} s | {lines} | '
          f'{text.count("Traceback")} | '
          f'{len(re.findall(r"] [IWEF][0-9]{4} ", text))} |')


def main(argv):
  del argv
  print('| point | fault | exit codes | stopped after | survivors said | '
        'tracebacks | C++ lines |')
  print('| --- | --- | --- | --- | --- | --- | --- |', flush=True)
  for point in POINTS:
    if not _POINTS.value or point.name in _POINTS.value:
      print(strike(point, direct=_DIRECT.value), flush=True)


if __name__ == '__main__':
  app.run(main)
