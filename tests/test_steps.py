"""The losses of the training step, and its update on several replicas."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import small_config
from mnist_dist import steps
from mnist_dist import trainable
from mnist_dist.distribution import strategy as strategy_lib


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_label_smoothing_matches_keras(smoothing):
  rng = np.random.default_rng(0)
  logits = tf.constant(rng.normal(size=(8, 10)) * 3, tf.float32)
  labels = tf.constant(rng.integers(0, 10, 8), tf.int32)
  reference = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=smoothing, reduction=None)(
          tf.one_hot(labels, 10), logits)
  np.testing.assert_allclose(
      steps._smoothed_loss(labels, logits, smoothing), reference, rtol=1e-5)
  if not smoothing:
    np.testing.assert_allclose(steps._per_example_loss(labels, logits),
                               reference, rtol=1e-5)


def _float16_run(cpu_devices, *, images, labels, initial_scale):
  """(weights, loss scale) after the real loop trained `dense` in
  mixed_float16 on cpu_devices replicas (0: one) from a dynamic loss scale
  of initial_scale."""
  config = small_config({'model.name': 'dense', 'optimizer.name': 'sgd',
                         'train.precision': 'mixed_float16',
                         'distribution.cpu_devices': cpu_devices})
  # The trainer's own strategy: one MirroredStrategy per device set and
  # process, as TensorFlow's collectives need.
  strategy = strategy_lib.create_strategy(config.distribution)
  keras.utils.set_random_seed(0)
  learner = trainable.build_model(
      config, strategy=strategy, steps_per_epoch=len(labels) // BATCH,
      settings=strategy_lib.DeviceSettings(
          precision='mixed_float16', jit_compile=False, steps_per_loop=1))
  learner.optimizer.dynamic_scale.assign(initial_scale)
  loop = steps.make_train_loop(
      strategy=strategy, train_step=steps.make_train_step(
          model=learner.model, optimizer=learner.optimizer,
          global_batch_size=BATCH, jit_compile=False),
      stop_on_nonfinite=False)
  batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
  loop(iter(strategy.experimental_distribute_dataset(batches)),
       tf.constant(len(labels) // BATCH))
  keras.mixed_precision.set_global_policy('float32')
  return ([np.asarray(w) for w in learner.model.get_weights()],
          float(learner.optimizer.dynamic_scale.numpy()))


BATCH = 32


def test_float16_replicas_skip_an_overflow_together():
  # Near float16's overflow point one replica's gradients can overflow while
  # another's do not. Keras' LossScaleOptimizer decides on each replica's
  # own gradients, before the all-reduce: a replica that saw no overflow
  # would apply the others' infinite sum. All must skip, or none.
  # Here the first replica's half of each batch is blank (small gradients),
  # the second's all ink (large ones).
  images = np.zeros((8, BATCH, 28, 28), np.uint8)
  images[:, BATCH // 2:] = 255
  labels = np.random.default_rng(0).integers(0, 10, 8 * BATCH).astype(
      np.int32)
  kwargs = dict(images=images.reshape(-1, 28, 28), labels=labels,
                initial_scale=2.0**24)
  one, one_scale = _float16_run(0, **kwargs)
  two, two_scale = _float16_run(2, **kwargs)
  assert all(np.isfinite(w).all() for w in two)
  assert one_scale == two_scale < 2.0**24  # Overflows, skipped alike.
  for w1, w2 in zip(one, two, strict=True):
    np.testing.assert_allclose(w1, w2, rtol=1e-2, atol=1e-3)


def test_the_loops_trace_the_step_as_written_not_rewritten_by_autograph():
  # Autograph would rewrite the step, the model's call and the optimizer's
  # glue into generated files at every start, for no change, since their
  # `if`s are on Python values (what it cost:
  # docs/performance.md#time-to-accuracy-the-mlperf-way).
  traced_from = []

  def train_step(images, labels):
    traced_from.append(inspect.currentframe().f_code.co_filename)
    del labels
    return {name: tf.reduce_sum(tf.cast(images, tf.float32))
            for name in steps.EXAMPLE_SUMS}

  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  batches = tf.data.Dataset.from_tensors(
      (tf.ones([2, 28, 28], tf.uint8), tf.zeros([2], tf.int32))).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(batches))
  loop = steps.make_train_loop(strategy=strategy, train_step=train_step,
                               stop_on_nonfinite=True)
  totals = loop(iterator, tf.constant(3)).numpy()
  assert totals.steps == 3 and totals.count == 3 * 2 * 28 * 28
  eval_loop = steps.make_eval_loop(
      strategy=strategy, eval_step=lambda images, labels: train_step(
          images, labels))
  eval_loop(iterator, tf.constant(2))
  assert traced_from == [__file__, __file__]
