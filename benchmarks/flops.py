"""The machine's limit: the arithmetic a training step needs, and how fast
this machine can do arithmetic at all.

Two numbers make examples/s comparable with the hardware: this module's
count, and the matmul rate, which lives in the package so that the installed
`mnist-dist-selftest` can measure it too:

- `train_flops_per_example`: the floating-point operations of one training
  step (forward, loss, gradient), per example, counted by TensorFlow's
  profiler on the step's traced graph: every op whose cost TensorFlow
  registers (convolutions and their two gradients, matrix products,
  element-wise arithmetic) at the shapes of the traced batch. Nothing is
  typed in: a change of the model changes the count. The optimizer's update
  (a few operations per weight, once per batch: under 1% here) is not in it.
- `matmul_gflops` (`mnist_dist/tools/matmul.py`): the rate of a large square
  matrix product in a dtype, timed on this machine now, the best of a few
  tries: what the CPU's vector units sustain on the friendliest kernel
  there is, so a practical ceiling for a training step in that dtype.

Achieved GFLOP/s = examples/s * FLOPs per example / 1e9; its fraction of
the float32 (or bfloat16) matmul rate says how far a config is from the
machine's limit.
"""

import keras
import ml_collections
import tensorflow as tf

from mnist_dist.modeling import models


def train_flops_per_example(model_config: ml_collections.ConfigDict, *,
                            batch_size: int) -> float:
  """FLOPs of one training step of model_config's model, per example.

  Traced (not run) at batch_size, with training=True (dropout, batch
  statistics), in float32: the count is the same in every precision. From
  uint8 images, as the trainer's step: their scaling is counted too.
  """
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy('float32')
  try:
    model = models.create_model(model_config)
  finally:
    keras.mixed_precision.set_global_policy(policy)

  @tf.function
  def forward_backward(images, labels):
    with tf.GradientTape() as tape:
      logits = model(models.model_input(images), training=True)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    return tape.gradient(loss, model.trainable_variables)

  graph = forward_backward.get_concrete_function(
      tf.TensorSpec([batch_size, 28, 28], tf.uint8),
      tf.TensorSpec([batch_size], tf.int32)).graph
  builder = tf.compat.v1.profiler.ProfileOptionBuilder
  options = builder(builder.float_operation()).with_empty_output().build()
  profile = tf.compat.v1.profiler.profile(graph, options=options)
  return profile.total_float_ops / batch_size
