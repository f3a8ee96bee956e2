"""Multi-worker training: a local 2-worker cluster through launch/local_cluster.py."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from helpers import checkpoint_variables
from helpers import run_main

LAUNCHER = os.path.join(ROOT, 'launch', 'local_cluster.py')


def _launch(*args, **kwargs):
  return subprocess.Popen([sys.executable, LAUNCHER, *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kwargs)


@pytest.mark.slow
def test_two_workers_match_one_process_over_two_devices(tmp_path, mnist_dir):
  # 468 steps of the dense config on the real MNIST, global batch 128.
  common = ['--config=configs/dense.py', f'--config.data.dir={mnist_dir}',
            '--config.train.epochs=1']
  cluster = _launch('--workers=2', '--', f'--workdir={tmp_path / "cluster"}',
                    *common)
  output = cluster.communicate(timeout=600)[0]
  assert cluster.returncode == 0, output[-3000:]
  single = run_main(f'--workdir={tmp_path / "single"}', *common,
                    '--config.distribution.cpu_devices=2', timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  # The chief alone writes, and only the chief's progress is logged.
  assert sorted(os.listdir(tmp_path / 'cluster')) == [
      'checkpoints', 'config.json', 'export', 'metrics.jsonl', 'plots',
      'tensorboard']
  assert re.search(r'\[worker 0\] .*step 468/468', output)
  assert not re.search(r'\[worker 1\] .*step \d+/468', output)

  cluster_weights = checkpoint_variables(tmp_path / 'cluster')
  single_weights = checkpoint_variables(tmp_path / 'single')
  assert cluster_weights.keys() == single_weights.keys() and cluster_weights
  for name, value in single_weights.items():
    np.testing.assert_allclose(cluster_weights[name], value, rtol=1e-4,
                               atol=1e-6, err_msg=name)
  with open(tmp_path / 'cluster' / 'metrics.jsonl') as f:
    (cluster_record,) = [json.loads(line) for line in f]
  with open(tmp_path / 'single' / 'metrics.jsonl') as f:
    (single_record,) = [json.loads(line) for line in f]
  for key in ('train_loss', 'eval_loss', 'eval_accuracy', 'eval_examples'):
    assert cluster_record[key] == pytest.approx(single_record[key], rel=1e-5)


def test_a_dead_worker_stops_the_cluster(tmp_path):
  cluster = _launch('--workers=2', '--grace_s=3', '--',
                    f'--workdir={tmp_path}', '--config.data.source=synthetic',
                    '--config.train.steps_per_loop=10')
  pids = {}
  for line in cluster.stdout:
    launched = re.match(r'\[launcher\] worker (\d): pid (\d+)', line)
    if launched:
      pids[int(launched.group(1))] = int(launched.group(2))
    if re.match(r'\[worker 0\] .*step \d+/', line):
      break
  os.kill(pids[1], signal.SIGKILL)
  rest = cluster.communicate(timeout=120)[0]
  assert cluster.returncode != 0
  # Worker 0 may fail on its own first, as its collectives abort.
  assert f'worker 1 exited with code -{int(signal.SIGKILL)}' in rest
  with pytest.raises(ProcessLookupError):
    os.kill(pids[0], 0)  # Worker 0 was stopped too.
