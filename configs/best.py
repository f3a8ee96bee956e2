r"""The best single model this trainer reaches on MNIST (work in progress).

  python -m mnist_dist.main --config=configs/best.py --workdir=/tmp/best \
      --config.data.dir=../shared/mnist --config.seed=0
"""

from mnist_dist import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.width = 2
  config.data.validation_split = 5000
  config.data.augment.max_shift = 2.0
  config.data.augment.max_rotation = 10.0
  config.data.augment.max_scale = 0.1
  config.train.epochs = 15
  config.train.global_batch_size = 128
  config.train.precision = 'mixed_bfloat16'
  config.train.label_smoothing = 0.1
  config.optimizer.schedule = 'cosine'
  config.optimizer.learning_rate = 0.01
  config.optimizer.warmup_epochs = 1.0
  config.train.ema_decay = 0.999
  config.outputs.tensorboard = False
  config.outputs.saved_model = False
  config.outputs.plots = False
  return config
