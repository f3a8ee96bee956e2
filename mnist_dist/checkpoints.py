"""Checkpoints that let a run survive interruption and lose nothing.

A checkpoint holds the model, the optimizer (whose step counter drives both
the learning-rate schedule and, through input_pipeline, the input order) and
the current epoch's running training sums, so a resumed run reports the same
epoch metrics as one that was never stopped.
"""

import tempfile

from absl import logging
import tensorflow as tf

from mnist_dist import workdir as workdir_lib
from mnist_dist.errors import CheckpointError

class Checkpointer:
  """Saves to and restores from WORKDIR/checkpoints.

  Under a multi-worker strategy every worker must take part in saving; only
  the chief's copy is kept, the others write to a temporary folder that is
  deleted after each save (TensorFlow's rule for multi-worker checkpoints).
  """

  def __init__(self, *, workdir: str, keep: int, is_chief: bool, **objects):
    self.directory = workdir_lib.path(workdir, workdir_lib.CHECKPOINTS)
    self.checkpoint = tf.train.Checkpoint(**objects)
    self._is_chief = is_chief
    write_dir = self.directory if is_chief else tempfile.mkdtemp()
    self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir,
                                              max_to_keep=keep)
    # Every worker restores from the chief's checkpoints.
    self._reader = self.manager if is_chief else tf.train.CheckpointManager(
        self.checkpoint, self.directory, max_to_keep=None)

  def restore_latest(self) -> str | None:
    """Restores the newest readable checkpoint; returns its path or None.

    A checkpoint that cannot be read (a crash while writing it, a damaged
    disk) is skipped with a warning for the one before it. One that reads
    but does not fit the model is an error: restoring part of it would
    silently train something else.
    """
    for path in reversed(self._reader.checkpoints):
      try:
        status = self.checkpoint.restore(path)
      # The checkpoint reader turns a short read into IndexError.
      except (tf.errors.DataLossError, tf.errors.OutOfRangeError,
              tf.errors.NotFoundError, IndexError) as e:
        logging.warning('Checkpoint %s is unreadable (%s); trying the one '
                        'before it.', path, str(e).strip().splitlines()[0])
        continue
      except (ValueError, tf.errors.InvalidArgumentError) as e:
        raise CheckpointError(f'{path} does not fit this model: {e}') from e
      try:
        status.assert_existing_objects_matched()
      except AssertionError as e:
        raise CheckpointError(f'{path} does not fit this model: {e}') from e
      return path
    return None

  def save(self, step: int) -> None:
    path = self.manager.save(checkpoint_number=step)
    if self._is_chief:
      logging.info('Saved checkpoint %s', path)
    else:
      tf.io.gfile.rmtree(self.manager.directory)
