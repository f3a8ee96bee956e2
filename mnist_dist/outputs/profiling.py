"""A TensorFlow profiler trace of chosen training steps (outputs.profile_steps).

  --config.outputs.profile_steps=101,200

records steps 101 to 200 (Keras' `profile_batch` convention: the first and
last step, counted from 1 over the whole run), rounded out to whole calls of
the compiled training loop, since a trace can start and stop only between
them. The trace goes to WORKDIR/tensorboard/plugins/profile/RUN/, where
TensorBoard's profile plugin opens it:

  pip install 'mnist_dist[profile]'      # tensorboard-plugin-profile
  tensorboard --logdir=WORKDIR/tensorboard

On the chief only: it is the chief's devices and host that the trace shows.
docs/performance.md says how to read one (input-bound or device-bound, host
round trips per loop call).
"""

from absl import logging
import tensorflow as tf

from mnist_dist.base import workdir as workdir_lib
from mnist_dist.outputs import actions


class Profile(actions.Action):
  """Traces the loop calls that run any of the steps first..last.

  first and last come parsed (`config.profile_steps`), so that checking a
  config needs no TensorFlow.
  """

  def __init__(self, *, first: int, last: int):
    self._first, self._last = first, last
    self._tracing = False

  def loop_start(self, context, *, step, num_steps):
    # This call runs steps step + 1 .. step + num_steps.
    if (not self._tracing and step < self._last and
        step + num_steps >= self._first):
      logdir = workdir_lib.path(context.workdir, workdir_lib.TENSORBOARD)
      tf.profiler.experimental.start(logdir)
      self._tracing = True
      logging.info('Profiling from step %d to %s.', step + 1, logdir)

  def loop_end(self, context, *, step, scalars):
    del context, scalars
    if self._tracing and step >= self._last:
      self._stop(step)

  def finish(self, context, *, trained):
    del context, trained
    if self._tracing:  # The run ended inside the range.
      self._stop(None)

  def _stop(self, step: int | None) -> None:
    tf.profiler.experimental.stop()
    self._tracing = False
    logging.info('Profiled%s; open it in TensorBoard\'s Profile tab.',
                 f' up to step {step}' if step else '')
