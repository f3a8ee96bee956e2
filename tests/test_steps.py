"""The losses of the training step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_dist import steps


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
