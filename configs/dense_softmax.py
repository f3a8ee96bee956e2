r"""The codelab's first model: one dense layer, softmax, plain SGD.

  python -m mnist_dist.main --config=configs/dense_softmax.py \
      --workdir=/tmp/dense_softmax --config.data.dir=../shared/mnist

Reaches ~90% in the codelab (batch 128, SGD at a constant lr 0.01, 10 epochs).
Measured here: the README's table of configs (python -m benchmarks.ladder).
"""

from mnist_dist import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'dense_softmax'
  config.train.global_batch_size = 128
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  config.optimizer.decay_rate = 1.0
  return config
