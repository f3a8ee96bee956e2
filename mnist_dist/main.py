r"""Trains one of the codelab's MNIST models on any tf.distribute strategy.

  python -m mnist_dist.main --config=configs/conv_bn.py --workdir=/tmp/run1 \
      --config.data.dir=/path/to/mnist

Any config value can be overridden with --config.a.b=value; see
mnist_dist/config.py for every key. Running the same command again resumes
from the workdir's latest checkpoint.

Output, on stderr: the run's own lines (`06:44:42 step 500/9370 epoch 1/10 |
loss 0.0980 ...`); on a terminal, a progress bar instead of a line per
training loop. Of TensorFlow's own log lines, only its Python warnings and
errors and its C++ fatal errors show: not its C++ notices and errors (an
error that stops a run reaches Python, and is said there), nor the INFO lines
of its Python modules. --tf_logs shows them all; TF_CPP_MIN_LOG_LEVEL, if
set, decides which C++ lines show.

Exit codes: 0 done; 2 bad config or data (one line says what, before any
training); 3 the loss became NaN or infinite (the last good checkpoint is
kept); 75 stopped by SIGTERM or SIGINT, to this worker or another of its
cluster, after saving a checkpoint (run again to resume); 76 another worker of
the cluster was lost (relaunch the cluster to resume from the last
checkpoint); 128+N a second signal N, which exits at once.
"""

import contextlib
import logging
import os
import re
import signal
import sys

_TF_LOGS_FLAG = 'tf_logs'
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
    if arg.startswith('-') and name == _TF_LOGS_FLAG:
      asked = value.lower() not in ('false', 'f', '0')
    elif arg.startswith('-') and name == 'no' + _TF_LOGS_FLAG:
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
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
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


# TensorFlow reads TF_CPP_MIN_LOG_LEVEL when it is imported: before the
# imports below import it.
with _cpp_lines_hidden(0 if 'tensorflow' in sys.modules
                       else _cpp_log_level(sys.argv)):
  import tensorflow as tf  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mnist_dist import cluster
from mnist_dist import config as config_lib
from mnist_dist import idx
from mnist_dist import interrupts
from mnist_dist import train
# pylint: enable=wrong-import-position

EXIT_BAD_INPUT = 2
EXIT_NONFINITE_LOSS = 3
EXIT_WORKER_LOST = 76  # EX_PROTOCOL: retryable, like 75, but not asked for.

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
    'conv_bn.py')

FLAGS = flags.FLAGS
# ml_collections raises these, not flags.Error, for an unknown config key, a
# value of the wrong type or a config file it cannot load.
_BAD_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError,
                    ValueError, OSError)


def _define_flags():
  # Defined here, not at import: declaring the config flag already applies
  # the command line's --config.x overrides to the default config.
  config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG, 'Path to a config file in configs/.',
      lock_config=True)
  flags.DEFINE_string('workdir', None,
                      'Where config.json, checkpoints/ and metrics.jsonl go '
                      '(local or gs://); the same workdir resumes a run.')
  flags.mark_flags_as_required(['workdir'])
  flags.DEFINE_bool(
      _TF_LOGS_FLAG, False,
      "Also show TensorFlow's own log lines: its C++ notices and errors and "
      'the INFO lines of its Python modules (its Python warnings and errors '
      'always show). TF_CPP_MIN_LOG_LEVEL, if set, decides the C++ lines. '
      'Give it on the command line (not in a --flagfile): it is read before '
      'TensorFlow loads.')


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


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


def _set_up_console(*, tf_logs: bool):
  """The run's lines on stderr in the console format; TensorFlow's INFO lines
  (checkpoint sharding, collectives, SavedModel writing) only with --tf_logs.
  """
  handler = absl_logging.get_absl_handler()  # app.run put it on the root.
  handler.setFormatter(_ConsoleFormatter())
  if not tf_logs:
    handler.addFilter(_own_or_warning)
  # Imported before absl's handler was installed, TensorFlow gave its logger
  # a stderr handler of its own: its lines would show twice.
  tf_logger = tf.get_logger()
  for tf_handler in list(tf_logger.handlers):
    if (isinstance(tf_handler, logging.StreamHandler)
        and tf_handler.stream is sys.stderr):
      tf_logger.removeHandler(tf_handler)


def _fail(message: str, code: int, *, prefix: str = 'error'):
  print(f'{prefix}: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _fail_on_flag(error: Exception):
  if isinstance(error, (AttributeError, KeyError)):
    while isinstance(error.args[0], BaseException):  # KeyError in AttributeError.
      error = error.args[0]
    _fail(f'unknown config key {error.args[0]}'.replace('\n', ' '),
          EXIT_BAD_INPUT)
  _fail(' '.join(str(error).split()), EXIT_BAD_INPUT)


def _parse_flags(argv):
  """absl's parser, with a bad flag or config key as one line and exit 2."""
  try:
    return FLAGS(argv)
  except _BAD_FLAG_ERRORS as e:
    _fail_on_flag(e)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_BAD_INPUT)
  _set_up_console(tf_logs=FLAGS[_TF_LOGS_FLAG].value)
  try:
    config = FLAGS.config
    # A config file that failed to load raises only when first used.
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    _fail(str(e), EXIT_BAD_INPUT)
  except _BAD_FLAG_ERRORS as e:
    _fail_on_flag(e)
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except (config_lib.ConfigError, idx.DataError) as e:
    _fail(str(e), EXIT_BAD_INPUT)
  except train.NonFiniteLossError as e:
    _fail(str(e), EXIT_NONFINITE_LOSS)
  except interrupts.Interrupted as e:
    _fail(str(e), interrupts.EXIT_CODE, prefix='stopped')
  except cluster.WorkerLost as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    # TensorFlow's aborted collectives and their threads can hold up an
    # orderly exit; there is nothing left to save.
    os._exit(EXIT_WORKER_LOST)  # pylint: disable=protected-access


def run():
  """Console-script entry point."""
  try:
    _define_flags()
  except _BAD_FLAG_ERRORS as e:
    _fail_on_flag(e)
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
