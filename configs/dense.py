r"""The codelab's second model: dense 200 and 60 relu, then 10, with Adam.

  python -m mnist_dist.main --config=configs/dense.py --workdir=/tmp/dense \
      --config.data.dir=../shared/mnist

Reaches ~97% in the codelab (batch 128, Adam at a constant lr 0.001, 10 epochs).
Measured here: the README's table of configs (python -m benchmarks.ladder).
"""

from mnist_dist import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'dense'
  config.train.global_batch_size = 128
  config.optimizer.learning_rate = 0.001
  config.optimizer.decay_rate = 1.0
  return config
