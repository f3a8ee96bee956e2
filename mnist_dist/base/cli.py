"""What the console scripts share: an error as one line and an exit code,
and the configs by name.

A user who gives a tool a bad flag, file or config sees `error: WHAT` (one
line, naming it) and an exit code, never a traceback; a bug still shows its
traceback, since only the classes a tool names are caught.

A signal is one line too (`stops`).
"""

import importlib.util
import os
import sys
from typing import Callable, NoReturn

from absl import app

from mnist_dist.base import errors
from mnist_dist.base import stops

# The trainer's config when --config is not given: the codelab's best model.
DEFAULT_CONFIG_NAME = 'conv_bn'


def configs_dir() -> str:
  """The folder of the config files, configs/*.py.

  Installed, it is the package's `mnist_dist.configs` (setup.cfg maps the
  repository's configs/ there); in a checkout run without installing, the
  repository's configs/ itself.
  """
  spec = importlib.util.find_spec('mnist_dist.configs')
  if spec and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(os.path.dirname(package), 'configs')


def config_names() -> list[str]:
  return sorted(name[:-3] for name in os.listdir(configs_dir())
                if name.endswith('.py') and not name.startswith('_'))


def config_path(name_or_path: str) -> str:
  """--config's value as a file: a name (conv_bn, fast) as that config's
  file, anything with a / or .py as the path it is."""
  if os.sep in name_or_path or name_or_path.endswith('.py'):
    return name_or_path
  if name_or_path not in config_names():
    raise errors.ConfigError(
        f'--config={name_or_path}: no such config; give a file, or one of: '
        f'{", ".join(config_names())}')
  return os.path.join(configs_dir(), name_or_path + '.py')


def one_line(error: BaseException) -> str:
  """The error's message with its line breaks and runs of spaces folded."""
  return ' '.join(str(error).split())


def fail(message: str, code: int, *, stopped: bool | None = None
         ) -> NoReturn:
  """Prints `error: message` (`stopped: ...` for a stop: by default, code
  75) and exits with code."""
  if stopped is None:
    stopped = code == errors.EXIT_INTERRUPTED
  prefix = 'stopped' if stopped else 'error'
  print(f'{prefix}: {message}', file=sys.stderr, flush=True)
  if code == errors.EXIT_WORKER_LOST:
    # TensorFlow's aborted collectives and their threads can hold up an
    # orderly exit; there is nothing left to save.
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def run(main: Callable[[object], None], *, flags_parser,
        exit_codes: dict[type[BaseException], int] | None = None) -> None:
  """app.run(main), with an error of exit_codes' classes, or a `stops.Stopped`,
  as one line.

  exit_codes: {error class: the code it exits with}, the first class that
  matches deciding; its message is the line. A tool whose lines need more
  than the message (the flag it came from) calls `fail` itself.
  """
  # A TensorFlow whose internals changed under the package is bad input to
  # every tool: one line naming its version (`tf_internals`).
  exit_codes = {errors.TensorFlowUnsupported: errors.EXIT_BAD_INPUT,
                **(exit_codes or {})}

  def main_with_exit_codes(argv):
    try:
      main(argv)
    except errors.Interrupted as e:
      fail(one_line(e), errors.EXIT_INTERRUPTED)
    except (stops.Stopped, Exception) as e:  # pylint: disable=broad-except
      if stops.stopping():  # Whatever code on the way made of the stop.
        fail(f'{stops.stopping()} before the command finished; what it '
             'writes is written whole or not at all: run it again',
             errors.EXIT_INTERRUPTED)
      if not isinstance(e, tuple(exit_codes)):
        raise
      fail(one_line(e), next(code for kind, code in exit_codes.items()
                             if isinstance(e, kind)), stopped=False)

  app.run(main_with_exit_codes, flags_parser=flags_parser)
