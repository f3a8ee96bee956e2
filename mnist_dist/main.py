r"""Trains one of the codelab's MNIST models on any tf.distribute strategy.

  python -m mnist_dist.main --config=configs/conv_bn.py --workdir=/tmp/run1 \
      --config.data.dir=/path/to/mnist

Any config value can be overridden with --config.a.b=value; see
mnist_dist/config.py for every key. Running the same command again resumes
from the workdir's latest checkpoint.

Output, on stderr: the run's own lines (`06:44:42 step 500/9370 epoch 1/10 |
loss 0.0980 ...`), and on a terminal a progress bar instead of a line per
training loop; of TensorFlow's, only its warnings and errors (see
mnist_dist/console.py; --tf_logs shows them all).

Exit codes: 0 done; 2 bad config or data (one line says what, before any
training); 3 the loss became NaN or infinite (the last good checkpoint is
kept); 75 stopped by SIGTERM or SIGINT, to this worker or another of its
cluster, after saving a checkpoint (run again to resume); 76 another worker of
the cluster was lost (relaunch the cluster to resume from the last
checkpoint); 128+N a second signal N, which exits at once.
"""

import os
import sys

from mnist_dist import console

console.import_tensorflow(sys.argv)  # Before anything else imports it.

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
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
      console.TF_LOGS_FLAG, False,
      "Also show TensorFlow's own log lines: its C++ notices and errors and "
      'the INFO lines of its Python modules (its Python warnings and errors '
      'always show). TF_CPP_MIN_LOG_LEVEL, if set, decides the C++ lines. '
      'Give it on the command line (not in a --flagfile): it is read before '
      'TensorFlow loads.')


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
  console.set_up(tf_logs=FLAGS[console.TF_LOGS_FLAG].value)
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
