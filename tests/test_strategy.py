"""Strategy choice and device-dependent defaults, TPU's included, on a CPU."""

import subprocess
import sys

import pytest
import tensorflow as tf

from helpers import assert_refused
from helpers import ROOT
from helpers import run_main
from mnist_dist import config as config_lib
from mnist_dist.distribution import strategy as strategy_lib


@pytest.mark.parametrize('kind,precision,jit,steps_per_loop', [
    ('TPU', 'mixed_bfloat16', False, 937),  # XLA compiles it all anyway.
    ('GPU', 'float32', True, 100),
    ('CPU', 'float32', False, 100),
])
def test_auto_settings_per_device(kind, precision, jit, steps_per_loop):
  settings = strategy_lib.device_settings(
      config_lib.default_config().train, device_kind=kind, steps_per_epoch=937)
  assert settings == strategy_lib.DeviceSettings(
      precision=precision, jit_compile=jit, steps_per_loop=steps_per_loop)


def test_explicit_settings_win():
  train = config_lib.default_config().train
  train.precision, train.jit_compile, train.steps_per_loop = (
      'mixed_float16', 'off', 7)
  settings = strategy_lib.device_settings(train, device_kind='GPU',
                                          steps_per_epoch=937)
  assert (settings.precision, settings.jit_compile,
          settings.steps_per_loop) == ('mixed_float16', False, 7)


def test_short_epochs_bound_the_auto_loop():
  settings = strategy_lib.device_settings(
      config_lib.default_config().train, device_kind='CPU', steps_per_epoch=30)
  assert settings.steps_per_loop == 30


def _distribution(strategy, cpu_devices=0):
  distribution = config_lib.default_config().distribution
  distribution.strategy, distribution.cpu_devices = strategy, cpu_devices
  return distribution


# multi_worker_mirrored and tpu are not created here: a process sets up one
# cluster or TPU system only (test_cluster.py runs the one, the test below
# the failure of the other).
@pytest.mark.parametrize('name,cpu_devices,kind,devices', [
    ('one_device', 0, tf.distribute.OneDeviceStrategy, ['CPU:0']),
    ('mirrored', 2, tf.distribute.MirroredStrategy, ['CPU:0', 'CPU:1']),
    ('auto', 0, tf.distribute.OneDeviceStrategy, ['CPU:0']),
    ('auto', 2, tf.distribute.MirroredStrategy, ['CPU:0', 'CPU:1']),
])
def test_each_name_creates_its_strategy(name, cpu_devices, kind, devices):
  strategy = strategy_lib.create_strategy(_distribution(name, cpu_devices))
  assert type(strategy) is kind  # pylint: disable=unidiomatic-typecheck
  assert strategy.num_replicas_in_sync == len(devices)
  assert [device.split('/device:')[-1]
          for device in strategy.extended.worker_devices] == devices


@pytest.mark.parametrize('tpu_host,gpus,cpu_devices,picked', [
    (True, 2, 2, 'tpu'),  # A TPU host trains on its TPU, whatever else.
    (False, 2, 0, 'mirrored'),  # Over all the GPUs.
    (False, 1, 0, 'one_device'),
    (False, 1, 2, 'mirrored'),  # Over the logical CPUs asked for.
    (False, 0, 0, 'one_device'),
])
def test_auto_picks_what_the_devices_call_for(monkeypatch, tpu_host, gpus,
                                              cpu_devices, picked):
  """As create_strategy's docstring and docs/scaling_out.md say, for devices
  this machine does not have: the choice, not the strategy, is recorded."""
  list_devices = tf.config.list_physical_devices
  monkeypatch.setattr(tf.config, 'list_physical_devices', lambda kind=None: (
      [f'GPU:{i}' for i in range(gpus)] if kind == 'GPU'
      else list_devices(kind)))
  monkeypatch.setattr(strategy_lib, '_tpu_host', lambda: tpu_host)
  monkeypatch.setattr(strategy_lib, '_make_strategy',
                      lambda name, **settings: (name, settings))
  name, settings = strategy_lib.create_strategy(
      _distribution('auto', cpu_devices))
  assert name == picked
  # Mirrored over the GPUs gets no device list (all of them), over the CPUs
  # the logical ones; a single GPU is used when there is one.
  assert settings['devices'] == (
      ('/device:CPU:0', '/device:CPU:1') if picked == 'mirrored' and cpu_devices
      else None)
  assert settings['gpu'] == bool(gpus)


def test_tpu_where_there_is_none_fails_at_once(tmp_path):
  process = run_main(f'--workdir={tmp_path}', '--config.data.source=synthetic',
                     '--config.distribution.strategy=tpu', timeout=120)
  assert_refused(process, says="error: distribution.strategy=tpu: no TPU "
                 "reachable at distribution.tpu='local'")


_COORDINATION = r'''
import json, socket, sys
s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
s.close()
import os
os.environ['TF_CONFIG'] = json.dumps({
    'cluster': {'worker': [f'127.0.0.1:{port}']},
    'task': {'type': 'worker', 'index': 0}})
from tensorflow.python.eager import context
from mnist_dist import config as config_lib
from mnist_dist.distribution import strategy as strategy_lib
distribution = config_lib.default_config().distribution
distribution.strategy = 'multi_worker_mirrored'
distribution.heartbeat_timeout_s, distribution.join_timeout_s = (
    float(sys.argv[1]), float(sys.argv[2]))
strategy_lib.create_strategy(distribution)
service = context.context().coordination_service
print(service.heartbeat_timeout_in_ms, service.cluster_register_timeout_in_ms,
      service.service_leader)
'''


@pytest.mark.parametrize('heartbeat_s, join_s, expected', [
    (7, 9, '7000 9000'),
    (0, 600, '30000 600000'),  # auto on a CPU-only host.
])
def test_the_cluster_timeouts_reach_the_coordination_service(
    heartbeat_s, join_s, expected):
  # A cluster of one worker, in a process of its own (one cluster a process).
  result = subprocess.run(
      [sys.executable, '-c', _COORDINATION, str(heartbeat_s), str(join_s)],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  heartbeat_ms, join_ms, leader = result.stdout.split()
  assert f'{heartbeat_ms} {join_ms}' == expected
  assert leader == '/job:worker/replica:0/task:0'
