"""Checkpoints that let a run survive interruption and lose nothing.

A checkpoint holds the model, the optimizer (whose step counter drives both
the learning-rate schedule and, through input_pipeline, the input order) and
the current epoch's running training sums, so a resumed run reports the same
epoch metrics as one that was never stopped.
"""

import json
import os
import tempfile

from absl import logging
import tensorflow as tf

from mnist_dist.config import ConfigError

CONFIG_FILE = 'config.json'
# Keys that change the variables, the step -> example mapping or the data: a
# checkpoint made under other values cannot continue this run.
RUN_DEFINING_KEYS = (
    'seed', 'model.name', 'model.width', 'optimizer.name',
    'train.ema_decay', 'train.global_batch_size',
    'train.precision', 'data.source', 'data.train_examples',
    'data.validation_split',
)


def _lookup(config_dict: dict, dotted: str):
  for part in dotted.split('.'):
    config_dict = config_dict.get(part, {}) if isinstance(config_dict,
                                                          dict) else None
  return config_dict


def check_and_record_config(config, workdir: str, *, write: bool) -> None:
  """Refuses a workdir whose earlier run had other run-defining values.

  Writes WORKDIR/config.json (the chief only, `write`), so that the next
  start, and `python -m mnist_dist.plots`, know what this run was.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
    current = json.loads(config.to_json())
    differences = [
        f'{key} was {_lookup(previous, key)!r}, now {_lookup(current, key)!r}'
        for key in RUN_DEFINING_KEYS
        if _lookup(previous, key) != _lookup(current, key)]
    if differences:
      raise ConfigError(
          f'{workdir} holds a run with another config ({"; ".join(differences)}'
          '): use a new --workdir, or the same values to resume it')
  if write:
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(config.to_json(indent=2))


class Checkpointer:
  """Saves to and restores from WORKDIR/checkpoints.

  Under a multi-worker strategy every worker must take part in saving; only
  the chief's copy is kept, the others write to a temporary folder that is
  deleted after each save (TensorFlow's rule for multi-worker checkpoints).
  """

  def __init__(self, *, workdir: str, keep: int, is_chief: bool, **objects):
    self.directory = os.path.join(workdir, 'checkpoints')
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
        raise ConfigError(f'{path} does not fit this model: {e}') from e
      try:
        status.assert_existing_objects_matched()
      except AssertionError as e:
        raise ConfigError(f'{path} does not fit this model: {e}') from e
      return path
    return None

  def save(self, step: int) -> None:
    path = self.manager.save(checkpoint_number=step)
    if self._is_chief:
      logging.info('Saved checkpoint %s', path)
    else:
      tf.io.gfile.rmtree(self.manager.directory)
