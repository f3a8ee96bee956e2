r"""Dense 200, 100 and 60 relu, each with dropout 0.25; a decaying lr.

  python -m mnist_dist.main --config=configs/dense_dropout.py \
      --workdir=/tmp/dense_dropout --config.data.dir=../shared/mnist

Reaches ~98% in the codelab (batch 128, Adam, lr 0.01 * 0.6^epoch, 10 epochs).
Measured here: the README's table of configs (python -m benchmarks.ladder).
"""

from mnist_dist import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'dense_dropout'
  config.model.dropout = 0.25
  config.train.global_batch_size = 128
  config.optimizer.learning_rate = 0.01
  config.optimizer.decay_rate = 0.6
  return config
