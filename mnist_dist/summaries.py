"""TensorBoard summaries of a run, in WORKDIR/tensorboard/{train,eval}.

  tensorboard --logdir=WORKDIR/tensorboard

Train and eval are two TensorBoard runs that write the same tags, `loss` and
`accuracy`, so that each chart overlays the training and the test curve. Train
also has `learning_rate`, `examples_per_s` and the config as text (`config`),
eval a few misclassified test digits (`misclassified`).
"""

import os

import numpy as np
import tensorflow as tf

from mnist_dist import workdir as workdir_lib


class Summaries:
  """Writes a run's summaries; with enabled=False (non-chief workers) no-ops.

  Every method takes the global step, TensorBoard's x axis.
  """

  def __init__(self, workdir: str, *, enabled: bool):
    self._writers = {
        name: tf.summary.create_file_writer(
            os.path.join(workdir_lib.path(workdir, workdir_lib.TENSORBOARD),
                         name))
        for name in ('train', 'eval')} if enabled else {}

  @property
  def enabled(self) -> bool:
    return bool(self._writers)

  def _scalars(self, run: str, step: int, values: dict) -> None:
    with self._writers[run].as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)

  def write_config(self, config) -> None:
    """The config as JSON text (TensorBoard's Text tab), at step 0."""
    if not self._writers:
      return
    # Indented four spaces: a Markdown code block, shown as it is.
    text = '\n'.join('    ' + line
                     for line in config.to_json(indent=2).splitlines())
    with self._writers['train'].as_default(step=0):
      tf.summary.text('config', text)

  def write_train(self, step: int, *, loss: float, accuracy: float,
                  learning_rate: float, examples_per_s: float) -> None:
    if self._writers:
      self._scalars('train', step, {
          'loss': loss, 'accuracy': accuracy, 'learning_rate': learning_rate,
          'examples_per_s': examples_per_s})

  def write_eval(self, step: int, *, loss: float, accuracy: float,
                 misclassified_images: np.ndarray | None = None) -> None:
    """Test-set loss and accuracy; misclassified_images: uint8 [K, 28, 28]."""
    if not self._writers:
      return
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
