"""What the console scripts share: an error as one line and an exit code.

A user who gives a tool a bad flag, file or config sees `error: WHAT` (one
line, naming it) and an exit code, never a traceback; a bug still shows its
traceback, since only the classes a tool names are caught.
"""

import os
import sys
from typing import Callable, NoReturn

from absl import app

from mnist_dist import errors

# The default --config of the trainer: the codelab's best model.
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
    'conv_bn.py')


def one_line(error: BaseException) -> str:
  """The error's message with its line breaks and runs of spaces folded."""
  return ' '.join(str(error).split())


def fail(message: str, code: int) -> NoReturn:
  """Prints `error: message` (`stopped: ...` for 75) and exits with code."""
  prefix = 'stopped' if code == errors.EXIT_INTERRUPTED else 'error'
  print(f'{prefix}: {message}', file=sys.stderr, flush=True)
  if code == errors.EXIT_WORKER_LOST:
    # TensorFlow's aborted collectives and their threads can hold up an
    # orderly exit; there is nothing left to save.
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def run(main: Callable[[object], None], *, flags_parser,
        exit_codes: dict[type[BaseException], int] | None = None) -> None:
  """app.run(main), with an error of exit_codes' classes as one line.

  exit_codes: {error class: the code it exits with}, the first class that
  matches deciding; its message is the line. A tool whose lines need more
  than the message (the flag it came from) calls `fail` itself.
  """
  exit_codes = exit_codes or {}

  def main_with_exit_codes(argv):
    try:
      main(argv)
    except tuple(exit_codes) as e:
      fail(one_line(e), next(code for kind, code in exit_codes.items()
                             if isinstance(e, kind)))

  app.run(main_with_exit_codes, flags_parser=flags_parser)
