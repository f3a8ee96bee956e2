"""The learning-rate schedules: the codelab's lr0 * rate**epoch, and cosine."""

import pytest

from helpers import load_config
from mnist_dist import config as config_lib
from mnist_dist.modeling import optimizers


@pytest.mark.parametrize('config_file,lr0,rate', [
    ('conv_bn', 0.01, 0.666), ('conv', 0.01, 0.6), ('dense', 0.001, 1.0)])
def test_staircase_equals_the_codelab_at_every_epoch(config_file, lr0, rate):
  config = load_config(config_file)
  schedule = optimizers.learning_rate_schedule(config.optimizer,
                                               steps_per_epoch=937,
                                               epochs=config.train.epochs)
  for epoch in range(config.train.epochs):
    for step in (epoch * 937, epoch * 937 + 500, epoch * 937 + 936):
      assert float(schedule(step)) == pytest.approx(lr0 * rate**epoch,
                                                    rel=1e-6), (epoch, step)


def test_smooth_variant_decays_within_the_epoch():
  config = config_lib.default_config()
  config.optimizer.staircase = False
  schedule = optimizers.learning_rate_schedule(config.optimizer,
                                               steps_per_epoch=100,
                                               epochs=10)
  assert float(schedule(0)) == pytest.approx(0.01)
  assert float(schedule(50)) == pytest.approx(0.01 * 0.666**0.5, rel=1e-6)
  assert float(schedule(300)) == pytest.approx(0.01 * 0.666**3, rel=1e-6)


def test_cosine_warms_up_then_decays_to_zero_at_the_last_step():
  config = config_lib.default_config()
  config.optimizer.schedule = 'cosine'
  config.optimizer.learning_rate = 0.02
  config.optimizer.warmup_epochs = 0.5
  schedule = optimizers.learning_rate_schedule(config.optimizer,
                                               steps_per_epoch=100, epochs=3)
  assert float(schedule(0)) == 0.0
  assert float(schedule(25)) == pytest.approx(0.01)  # Linear warm-up.
  assert float(schedule(50)) == pytest.approx(0.02)  # The peak.
  assert float(schedule(175)) == pytest.approx(0.01, rel=1e-5)  # Half-way.
  assert float(schedule(300)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize('name', optimizers.NAMES)
def test_every_optimizer_name_builds_its_class(name):
  config = config_lib.default_config()
  config.optimizer.name = name
  optimizer = optimizers.create_optimizer(
      config.optimizer, steps_per_epoch=100, epochs=10, precision='float32',
      skip_nonfinite=False)
  assert isinstance(optimizer, optimizers.OPTIMIZERS[name])
  assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_adam_takes_the_configs_betas():
  # The GPU record recipe's (0.7, 0.9): configs/fast.py's.
  config = config_lib.default_config()
  config.optimizer.beta_1, config.optimizer.beta_2 = 0.7, 0.9
  optimizer = optimizers.create_optimizer(
      config.optimizer, steps_per_epoch=100, epochs=1, precision='float32',
      skip_nonfinite=False)
  assert (optimizer.beta_1, optimizer.beta_2) == (0.7, 0.9)
