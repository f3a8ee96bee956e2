"""Checkpoints that let a run survive interruption and lose nothing.

A checkpoint holds the model, the optimizer (whose step counter drives both
the learning-rate schedule and, through input_pipeline, the input order) and
the current epoch's running training sums, so a resumed run reports the same
epoch metrics as one that was never stopped.

**Writing in the background** (`checkpoint.async_save`, on by default). A
save copies every checkpointed variable to host memory on the calling thread,
so that no later training step can change what is saved, and a writer thread
writes the copy while training goes on. Three rules keep every guarantee of a
synchronous save:

- *One write in flight.* A save first waits for the previous write (and
  raises its error, if it failed), so checkpoints are written, listed and
  deleted in step order, and the copy is never refreshed while being written.
- *Listed only when whole.* The `checkpoint` file that lists the checkpoints,
  which the next start reads, is replaced (atomically) by the writer thread
  once the new checkpoint's files are complete, and only then are the ones
  beyond `keep` deleted. A kill before that leaves the previous checkpoint
  the newest listed one, and the next start resumes from it, exactly.
- *Waited for where it counts.* Leaving a Checkpointer's context waits for
  the write in flight and raises its error: at the end of training (before
  the export), before exit 75 (a stop's checkpoint is complete and listed
  before the trainer says it saved one), and before a lost worker's message
  names the newest checkpoint.

Why not TensorFlow's own asynchronous checkpoint
(`tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)`):
it cannot save a Keras 3 optimizer, and it drops a failed write's error
(docs/design.md#checkpoints-that-do-not-stall-training). This module uses
the mechanism it is built on, a second tf.train.Checkpoint over the same
objects whose saver writes each variable's host copy in its place
(`tf_internals.saved_in_place`), with copies it makes itself.
"""

import concurrent.futures
import contextlib
import os
import tempfile
import time

from absl import logging
import keras
import tensorflow as tf

from mnist_dist.base import tf_internals
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.base.errors import CheckpointError


def _host(variable) -> str:
  """The CPU of the machine that holds variable, where its copy goes."""
  if isinstance(variable, keras.Variable):
    variable = variable.value
  return tf.DeviceSpec.from_string(variable.device).replace(
      device_type='CPU', device_index=0).to_string()


class _HostCopies:
  """A host copy of each variable a checkpoint saves, refreshed on demand.

  Made at the first refresh, when every variable exists: the model, the
  optimizer's slots and the averages are all built before the first step.
  """

  def __init__(self, root: tf.train.Checkpoint):
    self._root = root
    self._pairs = None  # [(variable, its copy)] once made.
    # What root's saves write in place of each variable: its copy.
    self._in_place = tf_internals.saved_in_place(root)
    self.device = None  # Where the copies are: the writer works there.

  def _make(self):
    pairs = []
    for trackable in tf.train.TrackableView(self._root).descendants():
      if trackable is self._root or trackable is self._root.save_counter:
        continue  # The writer's own, which only its thread changes.
      if isinstance(trackable, (tf.Variable, keras.Variable)):
        with tf.device(_host(trackable)):
          copy = tf.Variable(tf.zeros(trackable.shape, trackable.dtype),
                             trainable=False)
        pairs.append((trackable, copy))
        self._in_place[trackable] = copy
      elif tf_internals.saves_own_tensors(trackable):
        # It would be written as it is when the writer gets to it, not as it
        # was at the save.
        raise TypeError(f'{trackable!r} is checkpointed but is not a '
                        'variable: it cannot be written in the background')
    self._pairs = pairs
    self.device = _host(pairs[0][0])

  def refresh(self) -> None:
    """Copies every variable's current value; returns when all are copied."""
    if self._pairs is None:
      self._make()
    for variable, copy in self._pairs:
      copy.assign(variable.value if isinstance(variable, keras.Variable)
                  else variable)


class Checkpointer:
  """Saves to and restores from WORKDIR/checkpoints.

  Under a multi-worker strategy every worker must take part in saving; only
  the chief's copy is kept, the others write to a temporary folder that is
  deleted after each save (TensorFlow's rule for multi-worker checkpoints),
  in the background too, once the write is done.

  A context: leaving it waits for the write in flight (async_save) and
  raises its error, even over another exception leaving it, since a
  checkpoint that was not written must not go unsaid.
  """

  def __init__(self, *, workdir: str, keep: int, is_chief: bool,
               async_save: bool, **objects):
    self.directory = workdir_lib.path(workdir, workdir_lib.CHECKPOINTS)
    self.checkpoint = tf.train.Checkpoint(**objects)
    self._is_chief = is_chief
    write_dir = self.directory if is_chief else tempfile.mkdtemp()
    self._copies = None
    self._writer = None
    self._pending = None  # The write in flight.
    written = self.checkpoint
    if async_save:
      written = tf.train.Checkpoint(**objects)
      written.save_counter  # pylint: disable=pointless-statement
      # Created now, by this thread: CheckpointManager counts its saves.
      self._copies = _HostCopies(written)
      self._writer = concurrent.futures.ThreadPoolExecutor(
          max_workers=1, thread_name_prefix='checkpoint-writer')
    self.manager = tf.train.CheckpointManager(written, write_dir,
                                              max_to_keep=keep)
    # Every worker restores from the chief's checkpoints.
    self._reader = self.manager if is_chief else tf.train.CheckpointManager(
        self.checkpoint, self.directory, max_to_keep=None)

  def restore_latest(self) -> str | None:
    """Restores the newest readable checkpoint; returns its path, or None
    when none is listed (a new run).

    A checkpoint that cannot be read (a crash while writing it, a damaged
    disk) is skipped with a warning for the one before it. When none of
    those listed can be read, CheckpointError names them and nothing is
    restored: starting from step 0 instead would rewrite the run's metrics
    and, at its first saves, delete the checkpoints a user may still be able
    to recover, so starting over is the user's choice, made by moving the
    folder away. One that reads but does not fit the model is an error too:
    restoring part of it would silently train something else.
    """
    listed = self._reader.checkpoints
    cause = None  # The newest one's, for the error.
    for path in reversed(listed):
      try:
        status = self.checkpoint.restore(path)
      # The checkpoint reader turns a short read into IndexError.
      except (tf.errors.DataLossError, tf.errors.OutOfRangeError,
              tf.errors.NotFoundError, IndexError) as e:
        reason = str(e).strip().splitlines()[0]
        cause = cause or reason
        logging.warning('Checkpoint %s is unreadable (%s); trying the one '
                        'before it.', path, reason)
        continue
      except (ValueError, tf.errors.InvalidArgumentError) as e:
        raise CheckpointError(f'{path} does not fit this model: {e}') from e
      try:
        status.assert_existing_objects_matched()
      except AssertionError as e:
        raise CheckpointError(f'{path} does not fit this model: {e}') from e
      return path
    if listed:
      names = ', '.join(map(os.path.basename, listed))
      raise CheckpointError(
          f'none of the checkpoints in {self.directory} can be read ({names}; '
          f'the newest: {cause}); nothing was changed: restore them from a '
          f'copy, or move {self.directory} away to start the run over')
    return None

  def save(self, step: int) -> None:
    """Checkpoints the variables as they are now, as checkpoint `step`.

    Returns once they are captured: written, or with async_save copied, the
    write going on in the background. Raises the previous write's error.
    """
    start = time.monotonic()
    if self._writer is None:
      self._write(step, start=start)
      return
    self.wait()
    copy_start = time.monotonic()
    self._copies.refresh()
    self._pending = self._writer.submit(self._write, step, start=copy_start,
                                        waited_s=time.monotonic() - start)

  def _write(self, step: int, *, start: float, waited_s: float | None = None):
    """Writes checkpoint `step`, then lists it (the chief) or deletes it.

    start: when its save began (with async_save, its copy: the wait for the
    previous write is that write's). waited_s: how long save() held up
    training, if it returned before the write.
    """
    # A thread of its own starts with no device scope: the copies' host.
    with (tf.device(self._copies.device) if self._copies
          else contextlib.nullcontext()):
      path = self.manager.save(checkpoint_number=step)
    written_s = time.monotonic() - start
    if self._is_chief:
      logging.info('Saved checkpoint %s (written in %.3f s, training waited '
                   '%.3f s)', path, written_s,
                   written_s if waited_s is None else waited_s)
    else:
      workdir_lib.remove(self.manager.directory)

  def wait(self) -> None:
    """Returns when no write is in flight; raises its error if it failed."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    try:
      self.wait()
    finally:
      if self._writer is not None:
        self._writer.shutdown()
