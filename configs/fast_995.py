r"""99.5% on MNIST in seconds from launch on a 2-core CPU.

  python -m mnist_dist.main --config=configs/fast_995.py \
      --workdir=/tmp/fast_995 --config.data.dir=../shared/mnist

fast.py's net (conv_pool, the GPU record recipe's, at width 1) for 4 epochs
at batch 256 (in bfloat16 where it is native, as fast.py), with Adam at
0.01 and betas (0.7, 0.9), a one-cycle learning rate (a linear warm-up over
0.3 of an epoch, then half a cosine down to 0), label smoothing 0.1 and
best.py's seeded shifts (up to 2 pixels), rotations (up to 10 degrees) and
zooms (up to 10%). Issue #34 cut it down from conv_pool at width 2 for 8
epochs (kept as benchmarks/fast_995_reference.py, the cost it is measured
against). Chosen on a validation split (the last 5,000 training images);
the test set is evaluated once, at the end. How it was chosen:
docs/experiments.md; what it reaches and how fast, timed the MLPerf way
over five unseen seeds beside the reference: docs/performance.md (python
-m benchmarks.time_to_accuracy --config=fast_995 --target=0.995).
"""

from mnist_dist import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'conv_pool'
  config.model.width = 1
  config.data.validation_split = 5000
  config.data.augment.max_shift = 2.0
  config.data.augment.max_rotation = 10.0
  config.data.augment.max_scale = 0.1
  config.train.epochs = 4
  config.train.global_batch_size = 256
  config.train.precision = 'mixed_bfloat16_if_native'
  config.train.label_smoothing = 0.1
  config.optimizer.beta_1 = 0.7
  config.optimizer.beta_2 = 0.9
  config.optimizer.schedule = 'cosine'  # With its warm-up: one cycle.
  config.optimizer.warmup_epochs = 0.3
  return config
