"""SIGTERM and SIGINT as requests to checkpoint and stop, not as crashes.

TPU VMs and cloud GPUs are preempted with a SIGTERM and a short grace period;
Ctrl-C sends SIGINT. The first of either asks the training loop to stop at
the end of the current step loop (a second or so), save a checkpoint and
raise `errors.Interrupted` (exit 75); a second one exits at once. A failure
found by another thread, the workdir's lock lost (`workdir.Lock.lost`), is
a stop request too: the loop saves and raises that failure instead (in a
cluster the stop vote stops every worker; the chief, which holds the lock,
raises it).

Outside the training loops (starting, restoring, making the outputs) a
signal raises `stops.Stopped` at once, where the command installed that
(`stops.stop_on_signals`): nothing there is worth waiting for, since the
newest checkpoint already holds all that was trained. `stops_outside_loops`
turns it into the same `errors.Interrupted`, exit 75: the next start
continues, from the checkpoint, or by making the outputs again.
"""

from collections.abc import Callable
from concurrent import futures
import contextlib
import signal
import threading

from absl import logging

from mnist_dist.base import errors
from mnist_dist.base import stops


class SignalWatch:
  """A context in which the first SIGTERM/SIGINT sets `requested`, and
  `failure()` returns what else must stop the run (an error, or None).

  Python runs signal handlers only in the main thread and only between
  bytecodes, so a handler would wait for a compiled training loop to return.
  `call` runs such a loop in a worker thread while the main thread waits,
  which keeps the handlers, and so the second signal, prompt.
  """

  def __init__(self, signals=stops.SIGNALS, *,
               failure: Callable[[], Exception | None] = lambda: None):
    self.requested = None  # The name of the first signal received.
    self.failure = failure
    self._signals = signals
    self._previous = {}
    self._worker = futures.ThreadPoolExecutor(max_workers=1)

  @property
  def stopping(self) -> bool:
    """Whether the run was asked to stop, by a signal or a failure."""
    return self.requested is not None or self.failure() is not None

  def call(self, fn, *args):
    """fn(*args), with signals handled while it runs."""
    return self._worker.submit(fn, *args).result()

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:
      stops.exit_at_once(signum)
    self.requested = name
    logging.warning('%s received: stopping after the current step loop to '
                    'save a checkpoint (send it again to exit at once).', name)

  def __enter__(self):
    # Handlers can only be installed from the main thread.
    if threading.current_thread() is threading.main_thread():
      for signum in self._signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._worker.shutdown()


class Stage:
  """How far the run got, for the line of a stop outside the loops."""

  def __init__(self):
    self.finishing_at: int | None = None  # The step trained, once finishing.


@contextlib.contextmanager
def stops_outside_loops():
  """A `stops.Stopped` inside, as `errors.Interrupted`: one line, exit 75.

  Yields a Stage for the caller to mark where it is.
  """
  stage = Stage()
  try:
    yield stage
    stops.check_stop()  # One that code on the way swallowed.
  except errors.Interrupted:
    raise
  except (stops.Stopped, Exception):  # pylint: disable=broad-except
    # After a signal, what ends the run is the stop, whatever code on the
    # way (TensorFlow tracing, say) made of it.
    if not stops.stopping():
      raise
    raise errors.Interrupted.outside_loops(
        stops.stopping(), finishing_at=stage.finishing_at) from None
