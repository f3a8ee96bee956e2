"""How a command starts TensorFlow, and what a run prints: its own lines,
and of TensorFlow's only what matters.

TensorFlow's C++ start-up chatter (oneDNN, CUDA, CPU features) and the INFO
lines of its Python modules (checkpoint sharding, collectives, SavedModel
writing) are off unless --tf_logs; its Python warnings and errors always
show. The run's own lines read `06:44:42 step 500/9370 epoch 1/10 | ...`.

Every command calls `import_tensorflow` first, before anything imports
TensorFlow: TensorFlow reads TF_CPP_MIN_LOG_LEVEL and the environment of
`TF_ENVIRONMENT`, and prints its loading notices, as it is imported. Importing
the package itself changes nothing: a notebook or a program of the API's calls
`import_tensorflow` first, or sets those variables itself.
"""

import contextlib
import importlib
import importlib.abc
import logging
import os
import re
import signal
import sys

from absl import logging as absl_logging

TF_LOGS_FLAG = 'tf_logs'
# What TensorFlow must see before it loads, unless the user set it: the BFC
# allocator for CPU tensors, which keeps freed memory where the default one
# hands it back to the kernel and every step faults it in again; oneDNN's
# kernels on x86-64 Linux, which TensorFlow turns on by default only from
# AVX512_VNNI on. What each is worth on a CPU without AVX512_VNNI:
# docs/performance.md, "This CPU without bfloat16".
TF_ENVIRONMENT = {'TF_CPU_ALLOCATOR_USE_BFC': 'true'}
if sys.platform == 'linux' and os.uname().machine == 'x86_64':
  TF_ENVIRONMENT['TF_ENABLE_ONEDNN_OPTS'] = '1'
_CPP_LEVEL_VAR = 'TF_CPP_MIN_LOG_LEVEL'
# TensorFlow's C++ log lines: `I0000 00:00:1795676159.673100  23720 port.cc:153]
# oneDNN custom operations are on...`, and absl's notice before its first one.
_CPP_LINE = re.compile(rb'([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ')
_CPP_SEVERITIES = b'IWEF'
_CPP_NOTICE = b'WARNING: All log messages before absl::InitializeLog() is'


def _tf_logs_asked(argv: list[str]) -> bool:
  """Whether argv turns --tf_logs on, read before absl parses the flags."""
  asked = False
  for arg in argv[1:]:
    if arg == '--':
      break
    name, _, value = arg.lstrip('-').partition('=')
    if arg.startswith('-') and name == TF_LOGS_FLAG:
      asked = value.lower() not in ('false', 'f', '0')
    elif arg.startswith('-') and name == 'no' + TF_LOGS_FLAG:
      asked = False
  return asked


def _cpp_log_level(argv: list[str]) -> int:
  """TF_CPP_MIN_LOG_LEVEL: the user's if set, else 0 with --tf_logs, else 3.

  3 shows only FATAL lines: on a machine without a GPU every start logs a
  cuInit error, and a lost cluster worker a wall of aborted collectives, which
  this program says in one line; an error that stops a run reaches Python as
  an exception, which carries TensorFlow's message.
  """
  if _CPP_LEVEL_VAR not in os.environ and not _tf_logs_asked(argv):
    os.environ[_CPP_LEVEL_VAR] = '3'
  level = os.environ.get(_CPP_LEVEL_VAR, '0')
  return int(level) if level.isdigit() else 0


def _is_hidden_cpp_line(line: bytes, level: int) -> bool:
  if line.startswith(_CPP_NOTICE):
    return level > 0
  match = _CPP_LINE.match(line)
  return bool(match) and _CPP_SEVERITIES.index(match[1]) < level


@contextlib.contextmanager
def _cpp_lines_hidden(level: int):
  """Drops TensorFlow's C++ lines below `level` from stderr (fd 2) meanwhile.

  For `import tensorflow`: its libraries log lines as they load (oneDNN's and
  CUDA's notices) that TF_CPP_MIN_LOG_LEVEL does not reach. A forked process
  filters fd 2, so that what loading says before aborting (say, on a CPU
  without instructions the build needs) still shows.
  """
  if level <= 0 or not hasattr(os, 'fork'):
    yield
    return
  read_end, write_end = os.pipe()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:  # The filter: forwards lines until no one writes to the pipe.
    try:
      os.close(write_end)
      for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
      with os.fdopen(read_end, 'rb') as lines:
        for line in lines:
          if not _is_hidden_cpp_line(line, level):
            # To fd 2 itself, the original stderr in this process: a Jupyter
            # kernel's sys.stderr has no byte buffer.
            os.write(2, line)
    finally:
      os._exit(0)  # pylint: disable=protected-access
  os.close(read_end)
  stderr = os.dup(2)
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(stderr, 2)
    os.close(stderr)
    os.waitpid(pid, 0)


# What Keras imports as it loads, if installed, for what no run of ours calls:
# matplotlib for `keras.visualization`, IPython for its file editor's notebook
# view, PIL for `keras.utils.load_img`. About 0.2-0.3 s of start-up; the plots
# and the image reading import them when they run (each `try: import`, so
# Keras only loses those functions, in this process).
_KERAS_EXTRAS = frozenset({'matplotlib', 'IPython', 'PIL'})


class _Refuse(importlib.abc.MetaPathFinder):
  """An import finder that makes some packages look absent."""

  def __init__(self, packages: frozenset[str]):
    self._packages = packages

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.partition('.')[0] in self._packages:
      raise ModuleNotFoundError(f'{name}: not imported while TensorFlow '
                                'loads', name=name)
    return None


@contextlib.contextmanager
def _absent(packages: frozenset[str]):
  """Meanwhile, importing one of packages (not yet imported) fails."""
  finder = _Refuse(packages - {name.partition('.')[0]
                               for name in sys.modules})
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)


def set_tf_environment() -> None:
  """Sets `TF_ENVIRONMENT` where the user has not: for a command that
  imports TensorFlow itself, or starts processes that do."""
  for name, value in TF_ENVIRONMENT.items():
    os.environ.setdefault(name, value)


def import_tensorflow(argv: list[str]) -> None:
  """Imports TensorFlow and Keras as the commands run them: with
  `TF_ENVIRONMENT` set (a value the user set wins), TensorFlow's C++ log
  level set and its loading notices hidden (unless --tf_logs is in argv), and
  without Keras's extras (`_KERAS_EXTRAS`). Once TensorFlow is imported, too
  late for all but the last: the environment is left as it is."""
  level = 0
  if 'tensorflow' not in sys.modules:
    set_tf_environment()
    level = _cpp_log_level(argv)
  with _cpp_lines_hidden(level), _absent(_KERAS_EXTRAS):
    importlib.import_module('tensorflow')
    importlib.import_module('keras')


# mnist_dist/, whose modules' lines are the run's own.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_own(record: logging.LogRecord) -> bool:
  """Whether a mnist_dist module logged the record."""
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep)


def _own_or_warning(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or _is_own(record)


class _ConsoleFormatter(logging.Formatter):
  """`06:44:42 step 20/1404 ...`: the time, then the line. A warning or error
  says so, and a line from another package where it comes from:
  `06:44:42 warning: [deprecation.py:50] ...`."""

  def __init__(self):
    super().__init__('%(asctime)s %(message)s', datefmt='%H:%M:%S')

  def format(self, record: logging.LogRecord) -> str:
    clock, _, line = super().format(record).partition(' ')
    source = '' if _is_own(record) else (
        f'[{record.filename}:{record.lineno}] ')
    level = (f'{record.levelname.lower()}: '
             if record.levelno >= logging.WARNING else '')
    return f'{clock} {level}{source}{line}'


def set_up(*, tf_logs: bool):
  """The run's lines on stderr in the console format; TensorFlow's INFO lines
  (checkpoint sharding, collectives, SavedModel writing) only with --tf_logs.
  """
  handler = absl_logging.get_absl_handler()  # app.run put it on the root.
  handler.setFormatter(_ConsoleFormatter())
  if not tf_logs:
    handler.addFilter(_own_or_warning)
  # Imported before absl's handler was installed, TensorFlow gave its logger
  # a stderr handler of its own: its lines would show twice.
  tf_logger = logging.getLogger('tensorflow')
  for tf_handler in list(tf_logger.handlers):
    if (isinstance(tf_handler, logging.StreamHandler)
        and tf_handler.stream is sys.stderr):
      tf_logger.removeHandler(tf_handler)
