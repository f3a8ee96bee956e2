"""What every model is called on (`models.model_input`): the pixels scaled
exactly, and a checkpoint of the layout that scaled them in the model's
first layer restored into today's models as it is."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import small_config
from mnist_dist import trainable
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.modeling import models

_PIXELS = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)


def test_pixel_k_becomes_k_over_256_exactly_in_float32_and_bfloat16():
  scaled = models.model_input(_PIXELS)
  assert scaled.dtype == tf.float32
  np.testing.assert_array_equal(scaled.numpy(),
                                _PIXELS.astype(np.float64) / 256)
  # What a layer under mixed_bfloat16 casts it to loses nothing.
  np.testing.assert_array_equal(
      tf.cast(tf.cast(scaled, tf.bfloat16), tf.float32).numpy(),
      scaled.numpy())


def test_the_built_in_models_take_float_images_without_scaling_them():
  for name in models.NAMES:
    model = models.create_model(small_config({'model.name': name}).model)
    assert model.inputs[0].dtype == 'float32', name
    assert not any(isinstance(layer, keras.layers.Rescaling)
                   for layer in model.layers), name


def _old_layout(model_config) -> keras.Sequential:
  """A built-in model as it was built before models.model_input: uint8 in,
  scaled by 1/256 in its first layer."""
  return keras.Sequential(
      [keras.Input((28, 28), dtype='uint8'), keras.layers.Rescaling(1 / 256),
       *models.BUILDERS[model_config.name](model_config),
       keras.layers.Dense(models.NUM_CLASSES, dtype='float32', name='logits')],
      name=model_config.name)


def test_a_checkpoint_of_the_old_layout_restores_into_todays_model(
    tmp_path, monkeypatch):
  # conv_bn: weights, batch-norm statistics and dropout's seed state, all
  # checkpointed by position, and the optimizer's slots.
  config = small_config({'model.name': 'conv_bn'})
  settings = strategy_lib.DeviceSettings(precision='float32',
                                         jit_compile=False, steps_per_loop=1)

  def learner():
    return trainable.build_model(config, strategy=tf.distribute.get_strategy(),
                                 settings=settings, steps_per_epoch=10)

  def checkpointer(of):
    return trainable.checkpointer(config, str(tmp_path), chief=True,
                                  learner=of, settings=settings,
                                  counters=trainable.Counters())

  with monkeypatch.context() as patch:
    patch.setattr(models, 'create_model', _old_layout)
    old = learner()
  assert isinstance(old.model.layers[0], keras.layers.Rescaling)
  rng = np.random.default_rng(0)
  for variable in old.model.variables:  # Away from any initial value.
    if tf.as_dtype(variable.dtype).is_floating:
      variable.assign(rng.uniform(0.5, 1.5, variable.shape))
  with checkpointer(old) as saving:
    saving.save(1)

  new = learner()
  with checkpointer(new) as restoring:
    assert restoring.restore_latest()
  assert len(new.model.variables) == len(old.model.variables)
  for was, now in zip(old.model.variables, new.model.variables):
    np.testing.assert_array_equal(now.numpy(), was.numpy(), err_msg=was.path)
  images = rng.integers(0, 256, (5, 28, 28), np.uint8)
  np.testing.assert_array_equal(
      new.model(models.model_input(images), training=False).numpy(),
      old.model(images, training=False).numpy())


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_the_scaling_gives_the_old_layouts_logits_bit_for_bit(precision):
  config = small_config({'model.name': 'conv_bn'})
  keras.mixed_precision.set_global_policy(precision)
  try:
    old, new = _old_layout(config.model), models.create_model(config.model)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  new.set_weights(old.get_weights())
  images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), np.uint8)
  np.testing.assert_array_equal(
      new(models.model_input(images), training=False).numpy(),
      old(images, training=False).numpy())
