"""Strategy choice and device-dependent defaults, TPU's included, on a CPU."""

import pytest
import tensorflow as tf

from helpers import run_main
from mnist_dist import config as config_lib
from mnist_dist import strategy as strategy_lib


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


def test_every_strategy_name_but_auto_has_a_factory():
  assert strategy_lib.NAMES[0] == 'auto'
  assert set(strategy_lib.NAMES[1:]) == set(strategy_lib.FACTORIES)
  one_device = strategy_lib.FACTORIES['one_device'](None, 'local', False)
  assert isinstance(one_device, tf.distribute.OneDeviceStrategy)


def test_tpu_where_there_is_none_fails_at_once(tmp_path):
  process = run_main(f'--workdir={tmp_path}', '--config.data.source=synthetic',
                     '--config.distribution.strategy=tpu', timeout=120)
  assert process.returncode == 2, process.stderr[-2000:]
  last_line = process.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: distribution.strategy=tpu: no TPU '
                              "reachable at distribution.tpu='local'")
