"""SIGTERM and SIGINT as requests to checkpoint and stop, not as crashes.

TPU VMs and cloud GPUs are preempted with a SIGTERM and a short grace period;
Ctrl-C sends SIGINT. The first of either asks the training loop to stop at
the end of the current step loop (a second or so), save a checkpoint and
raise `errors.Interrupted` (exit 75); a second one exits at once. A failure
found by another thread, the workdir's lock lost (`workdir.Lock.lost`), is
a stop request too: the loop saves and raises that failure instead (in a
cluster the stop vote stops every worker; the chief, which holds the lock,
raises it).
"""

from collections.abc import Callable
from concurrent import futures
import os
import signal
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalWatch:
  """A context in which the first SIGTERM/SIGINT sets `requested`, and
  `failure()` returns what else must stop the run (an error, or None).

  Python runs signal handlers only in the main thread and only between
  bytecodes, so a handler would wait for a compiled training loop to return.
  `call` runs such a loop in a worker thread while the main thread waits,
  which keeps the handlers, and so the second signal, prompt.
  """

  def __init__(self, signals=SIGNALS, *,
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
      logging.error('Second signal (%s): exiting at once.', name)
      os._exit(128 + signum)  # pylint: disable=protected-access
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
