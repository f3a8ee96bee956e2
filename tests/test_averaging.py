"""The weight average: its arithmetic, what evaluations see, what is saved."""

import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_config
from mnist_dist import steps
from mnist_dist import train
from mnist_dist import trainable
from mnist_dist.data import input_pipeline
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.modeling import models


def _floats(model):
  return [v.numpy() for v in model.variables
          if v.value.dtype.is_floating]


def test_average_follows_the_documented_recurrence():
  # train.ema_decay=0.2 binds from the second update on: min(0.2, 2/11) is
  # the warm-up's 0.18, then min(0.2, 3/12) = 0.2, so both sides of the min
  # are checked, and an average that ignored train.ema_decay would fail.
  config = small_config({'model.name': 'conv_bn', 'model.dropout': 0.0,
                         'train.ema_decay': 0.2})
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  split, _ = input_pipeline.load(config.data, seed=0)
  learner = trainable.build_model(
      config, strategy=strategy, steps_per_epoch=10,
      settings=strategy_lib.DeviceSettings(
          precision='float32', jit_compile=False, steps_per_loop=1))
  model, average = learner.model, learner.average
  loop = steps.make_train_loop(
      strategy=strategy, train_step=steps.make_train_step(
          model=model, optimizer=learner.optimizer, global_batch_size=64,
          jit_compile=False, weight_average=average),
      stop_on_nonfinite=True)
  iterator = iter(strategy.distribute_datasets_from_function(
      lambda ctx: input_pipeline.train_dataset(
          ctx, split, global_batch_size=64, seed=0)))
  expected = _floats(model)
  for n in range(1, 6):
    loop(iterator, tf.constant(1))
    decay = min(0.2, (1 + n) / (10 + n))
    expected = [decay * e + (1 - decay) * w
                for e, w in zip(expected, _floats(model))]
  assert int(average.updates.numpy()) == 5
  for want, got in zip(expected, average.averages, strict=True):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)

  # Swapping in and out leaves both sides exactly as they were.
  live = _floats(model)
  with average.swapped_in():
    for want, got in zip(expected, _floats(model)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  for want, got in zip(live, _floats(model)):
    np.testing.assert_array_equal(got, want)


def test_evaluations_and_the_result_use_the_average(tmp_path):
  config = small_config({'train.ema_decay': 0.9, 'train.epochs': 2})
  result = train.train_and_evaluate(config, str(tmp_path))
  # The returned model holds the averages: evaluating it reproduces the
  # last evaluation, which the live weights would not.
  _, test = input_pipeline.load(config.data, seed=config.seed)
  logits = result.model(models.model_input(test.images), training=False)
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
      test.labels.astype(np.int32), logits)
  assert float(tf.reduce_mean(loss)) == pytest.approx(
      result.metrics[-1]['eval_loss'], rel=1e-4)
  # The checkpoint keeps both: the live weights to go on training from, and
  # the averages, which the model now holds.
  final = _floats(result.model)
  averages = _saved(tmp_path, 'weight_average')[:len(final)]
  live = [v for v in _saved(tmp_path, 'model') if v.dtype.kind == 'f']
  for want, got in zip(final, averages, strict=True):
    np.testing.assert_array_equal(got, want)
  assert len(live) == len(final)
  assert not all(np.array_equal(a, b) for a, b in zip(live, final))


def _saved(workdir, name):
  """The values of checkpoint list `name`, in list order."""
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  keys = [k for k in reader.get_variable_to_shape_map()
          if k.startswith(name + '/')]
  keys.sort(key=lambda k: int(k.split('/')[1]))
  return [reader.get_tensor(k) for k in keys]
