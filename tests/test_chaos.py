"""Chaos: seeded faults dealt to a 3-worker cluster under --max_restarts.

launch/chaos.py deals SIGKILLs and SIGTERMs to random workers at random
moments (start-up and joining included); whatever they strike, the run must
end as an uninterrupted one does. A failure prints the command that replays
it (the same seed deals the same faults at the same moments).
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import finished_state
from helpers import ROOT
from helpers import run_main

pytestmark = pytest.mark.slow  # Several launches of 3 workers: ~2 min a seed.

CHAOS = os.path.join(ROOT, 'launch', 'chaos.py')
# 85 steps an epoch in loops of 4, a checkpoint every 16: faults land
# mid-epoch, between checkpoints, in evaluations and in the outputs. Three
# epochs, so that a fast machine is still training when they strike.
_RUN = ('--config=configs/dense.py', '--config.data.source=synthetic',
        '--config.data.synthetic_train_examples=8160',
        '--config.data.synthetic_eval_examples=1000',
        '--config.train.global_batch_size=96', '--config.train.epochs=3',
        '--config.train.steps_per_loop=4', '--config.checkpoint.every_steps=16',
        '--config.outputs.tensorboard=False', '--config.outputs.plots=False')
# Each seed's first fault strikes within 3 s of the launch, however fast the
# machine (still importing TensorFlow); the others later: seed 3 kills
# worker 2 twice, then preempts worker 1 10.9 s into the third launch; seed
# 8 kills two workers of the first launch 0.6 s apart, then worker 1.
SEEDS = (3, 8)
FAULTS = 3
WITHIN_S = 12


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = run_main(f'--workdir={workdir}', *_RUN)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.parametrize('seed', SEEDS)
def test_a_cluster_dealt_faults_ends_as_an_uninterrupted_run(
    tmp_path, uninterrupted, seed):
  command = [sys.executable, CHAOS, f'--seed={seed}', f'--faults={FAULTS}',
             '--workers=3', f'--within_s={WITHIN_S}', '--',
             f'--workdir={tmp_path}', *_RUN]
  result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900,
                          check=False)
  output = result.stdout
  replay = f'\nreplay: {" ".join(command[1:])}'
  assert result.returncode == 0, output[-4000:] + replay
  struck = int(re.search(r'\[chaos\] seed \d+: (\d+) of', output)[1])
  assert struck >= 1, output[-4000:]
  assert 'Traceback' not in output, output[-4000:] + replay
  assert not re.search(r'\] [IWEF]\d{4} ', output), output[-4000:]  # No C++.

  records, weights = finished_state(tmp_path)
  expected_records, expected_weights = finished_state(uninterrupted)
  assert [r['epoch'] for r in records] == [1, 2, 3], replay
  for name, value in expected_weights.items():
    np.testing.assert_allclose(weights[name], value, rtol=1e-4, atol=1e-6,
                               err_msg=name + replay)
  for record, expected in zip(records, expected_records, strict=True):
    for key, value in expected.items():
      assert record[key] == pytest.approx(value, rel=1e-5), key + replay
