"""TensorBoard summaries of a run, in WORKDIR/tensorboard/{train,eval}.

  tensorboard --logdir=WORKDIR/tensorboard

Train and eval are two TensorBoard runs that write the same tags, `loss` and
`accuracy`, so that each chart overlays the training and the test curve. Train
also has `learning_rate`, `examples_per_s` and the config as text (`config`),
eval a few misclassified test digits (`misclassified`). `TensorBoard` is the
action that writes them during a run (`outputs.tensorboard`).
"""

import os

import numpy as np
import tensorflow as tf

from mnist_dist.base import workdir as workdir_lib
from mnist_dist.modeling import models
from mnist_dist.outputs import actions


class Summaries:
  """Writes a run's summaries (on the chief only: `TensorBoard`).

  Every method takes the global step, TensorBoard's x axis.
  """

  def __init__(self, workdir: str):
    self._writers = {
        name: tf.summary.create_file_writer(
            os.path.join(workdir_lib.path(workdir, workdir_lib.TENSORBOARD),
                         name))
        for name in ('train', 'eval')}

  def _scalars(self, run: str, step: int, values: dict) -> None:
    with self._writers[run].as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)

  def write_config(self, config) -> None:
    """The config as JSON text (TensorBoard's Text tab), at step 0."""
    # Indented four spaces: a Markdown code block, shown as it is.
    text = '\n'.join('    ' + line
                     for line in config.to_json(indent=2).splitlines())
    with self._writers['train'].as_default(step=0):
      tf.summary.text('config', text)

  def write_train(self, step: int, scalars: dict[str, float]) -> None:
    """Each {tag: value} of a training loop."""
    self._scalars('train', step, scalars)

  def write_eval(self, step: int, *, loss: float, accuracy: float,
                 misclassified_images: np.ndarray | None = None) -> None:
    """Test-set loss and accuracy; misclassified_images: uint8 [K, 28, 28]."""
    self._scalars('eval', step, {'loss': loss, 'accuracy': accuracy})
    if misclassified_images is not None:
      with self._writers['eval'].as_default(step=step):
        tf.summary.image('misclassified', misclassified_images[..., None],
                         max_outputs=len(misclassified_images))
    # TensorBoard shows what is flushed (by default every 2 minutes); an
    # epoch's end is worth showing at once.
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def misclassified(model, split, *, count=8, among=1000) -> np.ndarray:
  """A few digits of split the model gets wrong: uint8 [<= count, 28, 28]."""
  logits = model(models.model_input(split.images[:among]), training=False)
  wrong = tf.argmax(logits, axis=-1).numpy() != split.labels[:among]
  return split.images[:among][wrong][:count]


class TensorBoard(actions.Action):
  """A run's curves, config and mistakes, for `tensorboard --logdir`."""

  def __init__(self):
    self._summaries = None

  def start(self, context, *, step):
    del step
    self._summaries = Summaries(context.workdir)
    self._summaries.write_config(context.config)

  def loop_end(self, context, *, step, scalars):
    del context
    self._summaries.write_train(step, scalars)

  def record(self, context, record):
    images = None
    if context.device_kind != 'TPU':  # An eager model call, off the TPU.
      with context.evaluated_weights():
        images = misclassified(context.model, context.splits['eval'])
    self._summaries.write_eval(record['step'], loss=record['eval_loss'],
                               accuracy=record['eval_accuracy'],
                               misclassified_images=images)

  def finish(self, context, *, trained):
    del context, trained
    self._summaries.close()
