r"""Three convs (3x3x12, 6x6x24 stride 2, 6x6x32 stride 2), dense 200, then 10.

  python -m mnist_dist.main --config=configs/conv.py --workdir=/tmp/conv \
      --config.data.dir=../shared/mnist

Reaches ~99% in the codelab (batch 128, Adam, lr 0.01 * 0.6^epoch, 10 epochs).
Measured here: the README's table of configs (python -m benchmarks.ladder).
"""

from mnist_dist import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'conv'
  config.train.global_batch_size = 128
  config.optimizer.learning_rate = 0.01
  config.optimizer.decay_rate = 0.6
  return config
