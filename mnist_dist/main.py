r"""Trains one of the codelab's MNIST models on any tf.distribute strategy.

  python -m mnist_dist.main --config=configs/conv_bn.py --workdir=/tmp/run1 \
      --config.data.dir=/path/to/mnist

Any config value can be overridden with --config.a.b=value; see
mnist_dist/config.py for every key. Running the same command again resumes
from the workdir's latest checkpoint.

Output, on stderr: the run's own lines (`06:44:42 step 500/9370 epoch 1/10 |
loss 0.0980 ...`), and on a terminal a progress bar instead of a line per
training loop; of TensorFlow's, only its warnings and errors (see
mnist_dist/base/console.py; --tf_logs shows them all).

Exit codes: 0 done; 2 bad config or data (one line says what, before any
training); 3 the loss became NaN or infinite (the last good checkpoint is
kept); 75 stopped by SIGTERM or SIGINT, to this worker or another of its
cluster, at any moment, in training after saving a checkpoint (run again to
continue); 76 another worker of
the cluster was lost (relaunch the cluster to resume from the last
checkpoint); 128+N a second signal N, which exits at once.
"""

import logging
import os
import sys

from mnist_dist.base import stops

# This module is the command: from here on a signal is a stop, one line and
# exit 75, even while TensorFlow loads (a program that trains through the API
# imports mnist_dist.train instead, and keeps its own handlers).
stops.stop_on_signals()

# pylint: disable=wrong-import-position
from mnist_dist.base import console

console.import_tensorflow(sys.argv)  # Before anything else imports it.

from absl import flags
from ml_collections import config_flags

from mnist_dist import train
from mnist_dist.base import cli
from mnist_dist.base import errors
# pylint: enable=wrong-import-position

# The one table of what a run's end means: each error class and its code.
EXIT_CODES = {
    errors.ConfigError: errors.EXIT_BAD_INPUT,
    errors.DataError: errors.EXIT_BAD_INPUT,
    errors.WorkdirError: errors.EXIT_BAD_INPUT,
    errors.CheckpointError: errors.EXIT_BAD_INPUT,
    errors.TensorFlowUnsupported: errors.EXIT_BAD_INPUT,
    errors.NonFiniteError: errors.EXIT_NONFINITE,
    errors.Interrupted: errors.EXIT_INTERRUPTED,
    errors.TransientError: errors.EXIT_INTERRUPTED,
    errors.WorkerLost: errors.EXIT_WORKER_LOST,
}

FLAGS = flags.FLAGS
# ml_collections raises these, not flags.Error, for an unknown config key, a
# value of the wrong type or a config file it cannot load.
_BAD_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError,
                    ValueError, OSError)


def _define_flags(*, default_config: str, config_help: str):
  # Defined here, not at import: declaring the config flag already applies
  # the command line's --config.x overrides to the default config.
  config_flags.DEFINE_config_file('config', default_config, config_help,
                                  lock_config=True)
  flags.DEFINE_string('workdir', None,
                      'Where config.json, checkpoints/ and metrics.jsonl go '
                      '(local or gs://); the same workdir resumes a run.')
  flags.mark_flags_as_required(['workdir'])
  flags.DEFINE_bool(
      console.TF_LOGS_FLAG, False,
      "Also show TensorFlow's own log lines: its C++ notices and errors and "
      'the INFO lines of its Python modules (its Python warnings and errors '
      'always show). TF_CPP_MIN_LOG_LEVEL, if set, decides the C++ lines. '
      'Give it on the command line (not in a --flagfile): it is read before '
      'TensorFlow loads.')


def _fail_on_flag(error: Exception):
  if isinstance(error, (AttributeError, KeyError)):
    while isinstance(error.args[0], BaseException):  # KeyError in AttributeError.
      error = error.args[0]
    cli.fail(f'unknown config key {error.args[0]}'.replace('\n', ' '),
             errors.EXIT_BAD_INPUT)
  cli.fail(cli.one_line(error), errors.EXIT_BAD_INPUT)


def _parse_flags(argv):
  """absl's parser, with a bad flag or config key as one line and exit 2."""
  try:
    argv = FLAGS(argv)
    # A config file that failed to load raises only when first used.
    FLAGS.config.keys()
    return argv
  except _BAD_FLAG_ERRORS as e:
    _fail_on_flag(e)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}',
             errors.EXIT_BAD_INPUT)
  console.set_up(tf_logs=FLAGS[console.TF_LOGS_FLAG].value)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _config_names_as_paths(argv: list[str]) -> list[str]:
  """argv with --config=NAME (or --config NAME) as the path of that config:
  ml_collections loads --config from a file."""
  paths = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      paths[i] = '--config=' + cli.config_path(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(argv):
      paths[i + 1] = cli.config_path(argv[i + 1])
  return paths


def run():
  """Console-script entry point."""
  try:
    sys.argv = _config_names_as_paths(sys.argv)
  except errors.ConfigError as e:
    cli.fail(str(e), errors.EXIT_BAD_INPUT)
  default_config = cli.config_path(cli.DEFAULT_CONFIG_NAME)
  config_help = (f'A config: its name ({", ".join(cli.config_names())}) or '
                 'the path of a file with get_config().')
  try:  # Only ml_collections' parsing of --config.x overrides.
    _define_flags(default_config=default_config, config_help=config_help)
  except _BAD_FLAG_ERRORS as e:
    _fail_on_flag(e)
  try:
    cli.run(main, flags_parser=_parse_flags, exit_codes=EXIT_CODES)
  except SystemExit as done:
    if done.code not in (0, None):
      raise
    # Done, and everything the run writes is closed: skip Python's teardown
    # of TensorFlow's objects, most of a second between the last line and
    # the shell's prompt.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
  run()
