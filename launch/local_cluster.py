r"""Runs a multi-worker training cluster on this machine, one process a worker.

  python launch/local_cluster.py --workers=2 -- \
      --config=configs/conv_bn.py --workdir=/tmp/cluster \
      --config.data.dir=../shared/mnist

Everything after `--` goes to every worker's `python -m mnist_dist.main`,
with `--config.distribution.strategy=multi_worker_mirrored` added. Each worker
gets its own TF_CONFIG (as TensorFlow defines it) naming all workers on free
loopback ports; worker 0 is the chief, which writes the logs, metrics.jsonl
and checkpoints. Each worker's output lines are prefixed with `[worker N]`.

If any worker exits with an error, the others are stopped (SIGTERM, then
SIGKILL after --grace_s) and this exits with that worker's code. SIGTERM or
SIGINT to this launcher is passed on to every worker, so the cluster saves a
checkpoint and stops (exit 75); running the same command again resumes.
"""

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

_WORKERS = flags.DEFINE_integer('workers', 2, 'Number of worker processes.')
_GRACE_S = flags.DEFINE_float(
    'grace_s', 10.0, 'Seconds a worker gets to stop after SIGTERM before it is '
    'killed, once another worker has failed.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _relay(prefix: str, stream) -> None:
  for line in stream:
    sys.stdout.write(f'{prefix}{line}')
    sys.stdout.flush()


def _stop(processes, grace_s: float) -> None:
  for process in processes:
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
  deadline = time.time() + grace_s
  for process in processes:
    try:
      process.wait(timeout=max(deadline - time.time(), 0))
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def run_cluster(trainer_args: list[str], *, workers: int,
                grace_s: float) -> int:
  """Starts the workers, relays their output, returns the cluster's exit code."""
  addresses = [f'127.0.0.1:{port}' for port in free_ports(workers)]
  processes, relays = [], []
  for index in range(workers):
    env = dict(os.environ, TF_CONFIG=tf_config(addresses, index))
    process = subprocess.Popen(
        [sys.executable, '-m', 'mnist_dist.main', *trainer_args,
         '--config.distribution.strategy=multi_worker_mirrored'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    print(f'[launcher] worker {index}: pid {process.pid}, {addresses[index]}',
          flush=True)
    relay = threading.Thread(target=_relay,
                             args=(f'[worker {index}] ', process.stdout))
    relay.start()
    processes.append(process)
    relays.append(relay)

  def forward(signum, frame):
    del frame
    for process in processes:
      if process.poll() is None:
        process.send_signal(signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)

  first_failure = None
  while any(p.poll() is None for p in processes):
    failed = [i for i, p in enumerate(processes)
              if p.returncode not in (None, 0)]
    if failed:
      first_failure = failed[0]
      print(f'[launcher] worker {first_failure} exited with code '
            f'{processes[first_failure].returncode}: stopping the cluster',
            flush=True)
      _stop(processes, grace_s)
      break
    time.sleep(0.2)
  for relay in relays:
    relay.join()
  failures = [i for i, p in enumerate(processes) if p.returncode]
  for index in failures:
    if index != first_failure:
      print(f'[launcher] worker {index} exited with code '
            f'{processes[index].returncode}', flush=True)
  if first_failure is None and failures:
    first_failure = failures[0]
  code = 0 if first_failure is None else processes[first_failure].returncode
  if code < 0:  # Killed by a signal: report it the way a shell does.
    code = 128 - code
  print(f'[launcher] cluster finished with exit code {code}', flush=True)
  return code


def main(argv):
  sys.exit(run_cluster(argv[1:], workers=_WORKERS.value,
                       grace_s=_GRACE_S.value))


if __name__ == '__main__':
  app.run(main)
