"""SIGINT and SIGTERM as a stop from the moment a command starts: one line
and exit 75, never a traceback or a silent death.

A command calls `stop_on_signals` first (before TensorFlow loads, which
alone takes seconds). From then on the first signal raises `Stopped` where
the main thread is: what is under way unwinds (every file the project
writes is written whole or not at all, and the workdir's lock is let go),
and the command says `stopped: ...` and exits 75, the code that says "run
the same command again". The trainer's loops take the signal their own way,
as a request to save first (`mnist_dist.distribution.interrupts`). A second
signal exits at once, wherever it comes.

A leaf, like `errors`, and light: the earlier it is installed, the shorter
the window in which a signal still kills silently (Python's own start-up).
"""

import os
import signal
import sys
import threading
from typing import NoReturn

from mnist_dist.base import errors

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stopping: list[str] = []  # The signal raised as Stopped, once one came.


class Stopped(KeyboardInterrupt):
  """SIGINT or SIGTERM, raised in the main thread by `stop_on_signals`.

  A KeyboardInterrupt, as Python's own SIGINT is, so that no `except
  Exception` on the way takes it for an error of the code it interrupts.
  """

  def __init__(self, signal_name: str):
    super().__init__(signal_name)
    self.signal_name = signal_name


def exit_at_once(signum: int) -> NoReturn:
  """What a second signal does, wherever it comes."""
  print(f'stopped: a second signal ({signal.Signals(signum).name}): exiting '
        'at once', file=sys.stderr, flush=True)
  os._exit(128 + signum)  # pylint: disable=protected-access


def _stop(signum, frame):
  del frame
  name = signal.Signals(signum).name
  if _stopping:
    exit_at_once(signum)
  _stopping.append(name)
  raise Stopped(name)


def stopping() -> str | None:
  """The signal a Stopped was raised for, if one came: whatever exception
  ends the command after it is what code on the way made of the stop
  (TensorFlow, interrupted while it traces, raises its own errors)."""
  return _stopping[0] if _stopping else None


def check_stop() -> None:
  """Raises the `Stopped` of a signal again, if one came: for the points
  a command passes where a stop is safe, since code on the way may have
  swallowed it (an `except BaseException`, or a finalizer, where Python
  drops what a handler raises)."""
  if _stopping:
    raise Stopped(_stopping[0])


def _unraisable(hook_args) -> None:
  """sys.unraisablehook: a Stopped in a finalizer is dropped quietly, to be
  raised again at the next `check_stop`; anything else as Python shows it."""
  if not isinstance(hook_args.exc_value, Stopped):
    sys.__unraisablehook__(hook_args)


def _stopped_as_one_line(kind, value, traceback):
  """sys.excepthook: a Stopped nobody turned into a line (one while Python
  modules load, say) ends as one."""
  if not (issubclass(kind, Stopped) or _stopping):
    sys.__excepthook__(kind, value, traceback)
    return
  sys.stdout.flush()
  print(f'stopped: {stopping()} while starting; nothing was written: '
        'run the same command again', file=sys.stderr, flush=True)
  os._exit(errors.EXIT_INTERRUPTED)  # pylint: disable=protected-access


def stop_on_signals() -> None:
  """From now on SIGINT and SIGTERM raise `Stopped` in the main thread.

  Installed even where the signal was ignored: a command started in the
  background of a script inherits SIGINT ignored, and Ctrl-C or a `kill
  -INT` would then be lost. Only the main thread can install handlers.
  """
  if threading.current_thread() is not threading.main_thread():
    return
  for signum in SIGNALS:
    signal.signal(signum, _stop)
  sys.excepthook = _stopped_as_one_line
  sys.unraisablehook = _unraisable
