"""The inner loops: compiled functions that run many steps per call.

A per-replica step runs under `strategy.run` on every replica at once. The
loops around it are `tf.function`s that take the step count as a tensor, so one
trace serves every loop length (and, for evaluation, every split), and they
return `Totals`: sums reduced over replicas. Sums, not means, because sums add
up exactly across replicas, loops and epochs; the controller divides once.
Every sum is built and read by name (`EXAMPLE_SUMS`, `Totals`), never by
position.
"""

from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from mnist_dist.modeling import averaging
from mnist_dist.modeling import models

SUM = tf.distribute.ReduceOp.SUM

# What a step adds up over its examples; `example_sums` builds them.
EXAMPLE_SUMS = ('loss', 'correct', 'count')


class Totals(NamedTuple):
  """What a loop adds up, over its steps and all replicas.

  Tensors when a loop returns them, floats after `numpy()`. The loss, correct
  and count sums are over the examples of finite steps only.
  """
  loss: float  # Sum of per-example losses.
  correct: float  # Examples whose most likely class is the label.
  count: float  # Examples.
  steps: float  # Steps (batches) run, non-finite ones included.
  nonfinite_steps: float  # Steps whose loss was NaN or infinite.

  @classmethod
  def zero(cls) -> 'Totals':
    return cls(**dict.fromkeys(cls._fields, 0.0))

  def numpy(self) -> 'Totals':
    return Totals(**{name: float(np.asarray(value))
                     for name, value in self._asdict().items()})

  def plus(self, other: 'Totals') -> 'Totals':
    return Totals(**{name: value + getattr(other, name)
                     for name, value in self._asdict().items()})

  @property
  def mean_loss(self) -> float:
    return self.loss / max(self.count, 1)

  @property
  def accuracy(self) -> float:
    return self.correct / max(self.count, 1)


def example_sums(labels, logits, per_example_loss,
                 weights=None) -> dict[str, tf.Tensor]:
  """{EXAMPLE_SUMS name: sum} of one replica's batch, masked by weights."""
  correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32),
                             labels), tf.float32)
  if weights is None:
    weights = tf.ones_like(correct)
  return {'loss': tf.reduce_sum(per_example_loss * weights),
          'correct': tf.reduce_sum(correct * weights),
          'count': tf.reduce_sum(weights)}


def _no_sums() -> dict[str, tf.Tensor]:
  return {name: tf.constant(0.0) for name in EXAMPLE_SUMS}


def _add(sums: dict, more: dict) -> dict:
  return {name: sums[name] + more[name] for name in EXAMPLE_SUMS}


def _summed_over_replicas(strategy, step, args) -> dict[str, tf.Tensor]:
  """step's example_sums on every replica, added up over all of them.

  One all-reduce of a vector in EXAMPLE_SUMS' order, the only place the
  sums have positions: one collective where a dict would take three (and
  MultiWorkerMirroredStrategy reduces no dict).
  """

  def stacked_step(*batch):
    sums = step(*batch)
    return tf.stack([sums[name] for name in EXAMPLE_SUMS])

  summed = strategy.reduce(SUM, strategy.run(stacked_step, args=args),
                           axis=None)
  return {name: summed[i] for i, name in enumerate(EXAMPLE_SUMS)}


def _per_example_loss(labels, logits):
  # From logits: the log-softmax inside is stable where softmax-then-log is not.
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels, tf.cast(logits, tf.float32))


def _smoothed_loss(labels, logits, label_smoothing):
  """Cross-entropy against 1 - s + s/K for the label, s/K elsewhere."""
  num_classes = logits.shape[-1]
  targets = (tf.one_hot(labels, num_classes) * (1 - label_smoothing) +
             label_smoothing / num_classes)
  return tf.nn.softmax_cross_entropy_with_logits(targets,
                                                 tf.cast(logits, tf.float32))


def _accumulated(forward_backward, images, labels, *, micro_batches: int):
  """(gradients, example_sums) of the batch as micro_batches parts, added.

  Each part's loss is already divided by the global batch size, so the sum
  of the parts' gradients is the gradient of the whole batch's mean loss.
  Each part waits for the one before it (a control dependency), so that
  only one part's activations are alive at a time: what accumulation is
  for, and what the graph executor would not otherwise guarantee.
  """
  gradients, sums = None, None
  for part_images, part_labels in zip(tf.split(images, micro_batches),
                                      tf.split(labels, micro_batches)):
    with tf.control_dependencies(gradients or []):
      part_gradients, part_sums = forward_backward(part_images, part_labels)
    if gradients is None:
      gradients, sums = list(part_gradients), part_sums
    else:
      gradients = [total + part
                   for total, part in zip(gradients, part_gradients)]
      sums = _add(sums, part_sums)
  return gradients, sums


def _finite_on_every_replica(gradients: list[tf.Tensor]) -> list[tf.Tensor]:
  """The gradients, or NaN in all of them where any replica's are not finite.

  Keras' LossScaleOptimizer (mixed_float16, and on_nonfinite_loss=skip)
  decides to skip a step on each replica's own gradients, before the
  all-reduce. Near float16's overflow point one replica's can overflow
  while another's do not, and the one that saw none would apply the
  others' infinite sum: NaN weights everywhere (tests/test_steps.py). One
  all-reduce of a count makes every replica see what any saw, so all skip
  the step and lower the scale together.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return gradients
  local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                         for g in gradients])
  overflowed = context.all_reduce(SUM, 1.0 - tf.cast(local, tf.float32))
  return [tf.where(overflowed > 0, tf.cast(np.nan, g.dtype), g)
          for g in gradients]


def _make_forward_backward(*, model, optimizer, global_batch_size: int,
                           label_smoothing: float, micro_batches: int):
  """forward_backward(images, labels) -> (gradients, example_sums): one
  (micro-)batch's part of make_train_step's update."""

  def forward_backward(images, labels):
    with tf.GradientTape() as tape:
      logits = model(models.model_input(images), training=True)
      per_example_loss = _per_example_loss(labels, logits)
      loss = tf.nn.compute_average_loss(
          _smoothed_loss(labels, logits, label_smoothing) if label_smoothing
          else per_example_loss, global_batch_size=global_batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(
            tf.add_n(model.losses)) / micro_batches
      scaled_loss = optimizer.scale_loss(loss)  # Loss scaling for float16.
    gradients = tape.gradient(scaled_loss, model.trainable_variables)
    return gradients, example_sums(labels, logits, per_example_loss)

  return forward_backward


def make_train_step(*, model: keras.Model,
                    optimizer: keras.optimizers.Optimizer,
                    global_batch_size: int, jit_compile: bool,
                    label_smoothing: float = 0.0,
                    weight_average: averaging.WeightAverage | None = None,
                    accumulation_steps: int = 1
                    ) -> Callable[..., tf.Tensor]:
  """Returns train_step(images, labels) -> `example_sums` of the batch.

  images come as uint8, as the input pipeline sends them to the device; the
  step makes them the model's float input (`models.model_input`).

  The per-replica step: `strategy.run` runs it on every replica's batch.
  The loss each replica differentiates is its per-example losses summed and
  divided by the *global* batch size, so that the optimizer's all-reduce (a
  sum over replicas) yields the gradient of the mean over the global batch,
  whatever the replica count. Regularization losses, which every replica
  computes in full, are divided by the replica count for the same reason.
  The reported loss is the unscaled per-example loss, without label
  smoothing, so that it compares with the evaluation's.

  Everything in it must compile with XLA, update and weight average
  included: a TPU compiles the whole replicated step (tests/test_xla.py
  checks each option on CPU). jit_compile=True compiles the forward and
  backward pass only; the all-reduce and update stay outside, where every
  strategy supports them. With weight_average, each step ends by folding the
  new weights into it.

  With accumulation_steps=k, each replica's batch is split into k
  micro-batches whose gradients are added before the one update, so R
  replicas train as R*k replicas would without it: the same global batch,
  the same update (batch norm's statistics are those of each micro-batch,
  as they are each replica's). Regularization losses, computed in full for
  each micro-batch, are divided by k too. A step is still one update.
  """
  forward_backward = _make_forward_backward(
      model=model, optimizer=optimizer, global_batch_size=global_batch_size,
      label_smoothing=label_smoothing, micro_batches=accumulation_steps)
  if jit_compile:
    forward_backward = tf.function(forward_backward, jit_compile=True,
                                   autograph=False)

  def train_step(images, labels):
    if accumulation_steps == 1:
      gradients, sums = forward_backward(images, labels)
    else:
      gradients, sums = _accumulated(forward_backward, images, labels,
                                     micro_batches=accumulation_steps)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      gradients = _finite_on_every_replica(gradients)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    if weight_average:
      weight_average.update()
    return sums

  return train_step


def make_train_loop(*, strategy: tf.distribute.Strategy,
                    train_step: Callable[..., tf.Tensor],
                    stop_on_nonfinite: bool) -> Callable[..., Totals]:
  """Returns train_loop(iterator, num_steps) -> Totals of the steps run.

  With stop_on_nonfinite the loop ends right after a step whose loss is not
  finite on some replica; otherwise it goes on (the optimizer, a
  LossScaleOptimizer then, skips the update). Nothing in the loop runs on the
  host alone (no Python, printing or summaries), so that a TPU can compile
  all of it.
  """

  # A tf.while_loop written out, traced with autograph off: with it on,
  # autograph rewrites every function the loop calls (the step, the model's
  # and the optimizer's glue) at every start, though none needs it: their
  # `if`s are on Python values. What it cost, measured:
  # docs/performance.md#time-to-accuracy-the-mlperf-way.
  @tf.function(autograph=False)
  def train_loop(iterator, num_steps):
    def more(steps, stopped, unused_nonfinite_steps, unused_sums):
      return tf.logical_and(steps < num_steps, tf.logical_not(stopped))

    def step(steps, unused_stopped, nonfinite_steps, sums):
      step_sums = _summed_over_replicas(strategy, train_step, next(iterator))
      finite = tf.math.is_finite(step_sums['loss'])  # Any replica's NaN shows.
      sums = _add(sums, {name: tf.where(finite, value, 0.0)
                         for name, value in step_sums.items()})
      nonfinite = tf.logical_not(finite)
      stopped = nonfinite if stop_on_nonfinite else tf.constant(False)
      return (steps + 1, stopped,
              nonfinite_steps + tf.cast(nonfinite, tf.int32), sums)

    steps, _, nonfinite_steps, sums = tf.while_loop(
        more, step, (tf.constant(0), tf.constant(False), tf.constant(0),
                     _no_sums()))
    return Totals(**sums, steps=steps, nonfinite_steps=nonfinite_steps)

  return train_loop


def make_eval_step(*, model: keras.Model) -> Callable[..., tf.Tensor]:
  """Returns eval_step(images, labels, weights) -> `example_sums` of the batch.

  The eval batches carry a weight per example, 0 for padding, so the count is
  exactly the number of real examples. images: uint8, as for train_step.
  """

  def eval_step(images, labels, weights):
    logits = model(models.model_input(images), training=False)
    return example_sums(labels, logits, _per_example_loss(labels, logits),
                        weights)

  return eval_step


def make_eval_loop(*, strategy: tf.distribute.Strategy,
                   eval_step: Callable[..., tf.Tensor]
                   ) -> Callable[..., Totals]:
  """Returns eval_loop(iterator, num_steps) -> Totals of num_steps batches.

  One trace serves every split whose batches have the same shapes: the
  validation split and the test set, evaluated in the same run.
  """

  @tf.function(autograph=False)  # Why: make_train_loop.
  def eval_loop(iterator, num_steps):
    def more(steps, unused_sums):
      return steps < num_steps

    def step(steps, sums):
      return steps + 1, _add(sums, _summed_over_replicas(
          strategy, eval_step, next(iterator)))

    steps, sums = tf.while_loop(more, step, (tf.constant(0), _no_sums()))
    return Totals(**sums, steps=steps, nonfinite_steps=0)

  return eval_loop
