"""An exponential moving average of a model's weights, for evaluation.

Late in training the weights jitter around a minimum with the noise of each
batch; their running average sits closer to it and usually evaluates better.
The average covers every float variable of the model, batch-norm statistics
included, so that the averaged weights are normalized by statistics that were
averaged along with them (as timm's ModelEmaV2 does); averaging only the
trainable weights, as Keras' `use_ema` does, leaves them paired with the
statistics of the live weights, which early in training is chance accuracy.
"""

import contextlib

import keras
import tensorflow as tf


class WeightAverage:
  """average = d * average + (1 - d) * weight after each training step.

  d = min(decay, (1 + n) / (10 + n)) at update n (as tf.train's
  ExponentialMovingAverage with num_updates), so the first updates forget the
  initial weights quickly instead of dragging them along for 1 / (1 - decay)
  steps.

  Create it inside the strategy's scope. The averages are mirrored variables
  that take the first replica's value, which every replica holds alike for
  the trainable weights (per-replica batch-norm statistics differ a little).
  """

  def __init__(self, model: keras.Model, *, decay: float):
    self._decay = decay
    self._weights = [v.value for v in model.variables
                     if v.value.dtype.is_floating]  # Not dropout's seed.
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.averages = [tf.Variable(w.read_value(), trainable=False,
                                 aggregation=first) for w in self._weights]
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False,
                               aggregation=first)

  def update(self) -> None:
    """Folds the current weights in; call in replica context, after a step."""
    n = tf.cast(self.updates + 1, tf.float32)
    decay = tf.minimum(self._decay, (1 + n) / (10 + n))
    for average, weight in zip(self.averages, self._weights):
      average.assign(decay * average + (1 - decay) * weight)
    self.updates.assign_add(1)

  def _swap(self):
    for average, weight in zip(self.averages, self._weights):
      held = tf.identity(weight)
      weight.assign(average)
      average.assign(held)

  @contextlib.contextmanager
  def swapped_in(self):
    """Inside: the model holds the averages (and the average the weights)."""
    self._swap()
    try:
      yield
    finally:
      self._swap()

  def keep(self) -> None:
    """Sets the model to the averages for good."""
    for average, weight in zip(self.averages, self._weights):
      weight.assign(average)
