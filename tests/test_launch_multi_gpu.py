"""launch/multi_gpu.sh, run with a fake python (the harness:
launch_harness.py)."""

import os
import sys

import pytest

from helpers import ROOT
from launch_harness import LAUNCH, TRICKY_ARG, dry_run_commands

MULTI_GPU = os.path.join(LAUNCH, 'multi_gpu.sh')


def test_multi_gpu_dry_run_shows_the_gpus_and_mirrored(env):
  args = ['--workdir=/tmp/run1', '--config.train.precision=mixed_float16',
          '--config=configs/conv.py']
  process = env.run(MULTI_GPU, args, DRY_RUN=1, GPUS='0,1')
  assert process.returncode == 0, process.stderr
  assert dry_run_commands(process.stdout) == [[
      'env', 'CUDA_VISIBLE_DEVICES=0,1', 'python3', '-m', 'mnist_dist.selftest',
      '--out=/tmp/run1/selftest.json'
  ], [
      'env', 'CUDA_VISIBLE_DEVICES=0,1', 'python3', '-m', 'mnist_dist.main',
      '--config=configs/conv.py', '--config.distribution.strategy=mirrored',
      '--workdir=/tmp/run1', '--config.train.precision=mixed_float16']]
  assert env.calls() == []


def test_multi_gpu_runs_the_trainer_with_the_gpus(env):
  process = env.run(MULTI_GPU, ['--workdir=/tmp/run1', TRICKY_ARG], GPUS='1,3',
                    PYTHON=env.bin / 'fakepython')
  assert process.returncode == 0, process.stderr
  selftest, trainer = env.calls('fakepython')
  for call in (selftest, trainer):
    assert call['env']['CUDA_VISIBLE_DEVICES'] == '1,3'
  assert selftest['argv'] == ['-m', 'mnist_dist.selftest',
                              '--out=/tmp/run1/selftest.json']
  assert trainer['argv'] == [
      '-m', 'mnist_dist.main', f'--config={ROOT}/configs/conv_bn.py',
      '--config.distribution.strategy=mirrored', '--workdir=/tmp/run1',
      TRICKY_ARG]


def test_multi_gpu_stops_before_training_when_the_selftest_fails(env):
  process = env.run(MULTI_GPU, ['--workdir', '/tmp/run1/'], GPUS='0,1',
                    PYTHON=env.bin / 'fakepython',
                    FAKE_FAIL_PATTERN='mnist_dist.selftest')
  assert process.returncode == 1
  (call,) = env.calls('fakepython')
  assert call['argv'] == ['-m', 'mnist_dist.selftest',
                          '--out=/tmp/run1/selftest.json']
  assert ('multi_gpu.sh: the self-test failed (exit 1; its table is above): '
          'not training. --skip_selftest trains without it') in process.stderr


def test_multi_gpu_skip_selftest_only_trains(env):
  process = env.run(MULTI_GPU, ['--skip_selftest', '--workdir=/tmp/run1'],
                    PYTHON=env.bin / 'fakepython')
  assert process.returncode == 0, process.stderr
  (call,) = env.calls('fakepython')
  assert call['argv'][:2] == ['-m', 'mnist_dist.main']
  assert '--skip_selftest' not in call['argv']


def test_multi_gpu_passes_the_trainers_exit_code(env):
  process = env.run(MULTI_GPU, ['--workdir=/tmp/run1'],
                    PYTHON=env.bin / 'fakepython',
                    FAKE_FAIL_PATTERN='mnist_dist.main', FAKE_FAIL_CODE=75)
  assert process.returncode == 75
  assert 'CUDA_VISIBLE_DEVICES' not in env.calls('fakepython')[0]['env']


def test_multi_gpu_refuses_bad_gpus(env):
  process = env.run(MULTI_GPU, ['--workdir=/tmp/x'], GPUS='first,second')
  assert process.returncode == 2
  assert 'multi_gpu.sh: error: GPUS=first,second' in process.stderr


@pytest.mark.slow  # A real (short) training run.
def test_multi_gpu_command_is_accepted_by_the_trainer(env, tmp_path):
  """The real entry point parses the flags in the order the script gives."""
  process = env.run(MULTI_GPU, ['--skip_selftest', f'--workdir={tmp_path}/w',
                                '--config.train.precision=mixed_float17'],
                    PYTHON=sys.executable)
  assert process.returncode == 2, process.stderr[-2000:]
  assert "train.precision='mixed_float17' is not one of" in process.stderr
