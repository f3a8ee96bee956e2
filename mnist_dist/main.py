r"""Trains one of the codelab's MNIST models on any tf.distribute strategy.

  python -m mnist_dist.main --config=configs/conv_bn.py --workdir=/tmp/run1 \
      --config.data.dir=/path/to/mnist

Any config value can be overridden with --config.a.b=value; see
mnist_dist/config.py for every key. A bad config or bad data ends the run
before training with one line naming the problem and exit code 2.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mnist_dist import config as config_lib
from mnist_dist import idx
from mnist_dist import train

EXIT_BAD_INPUT = 2

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
    'conv_bn.py')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Path to a config file in configs/.',
    lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Where checkpoints, metrics.jsonl and exports go '
                    '(local or gs://).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_lib.ConfigError, idx.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == '__main__':
  run()
