r"""The best single model found here: 99.63% mean test accuracy over 3 seeds.

  for seed in 0 1 2; do
    python -m mnist_dist.main --config=configs/best.py --workdir=/tmp/best_$seed \
        --config.data.dir=../shared/mnist --config.seed=$seed
  done

The codelab's conv + batch-norm net at twice the width (24, 48, 64 filters),
trained 15 epochs at batch 128 on seeded random shifts (up to 2 pixels),
rotations (up to 10 degrees) and zooms (up to 10%), with label smoothing 0.1,
a cosine learning rate with one epoch of warm-up to 0.01, an exponential
moving average of the weights (decay 0.999) for evaluation, in bfloat16.

Chosen on a validation split (the last 5,000 training images); the test set
is evaluated once, at the end of each run. Measured here (2-core CPU, ~4-6
minutes a run): test 99.62%, 99.60%, 99.67% for seeds 0, 1, 2 (mean 99.63%);
validation 99.78%, 99.70%, 99.62%. The issue's 99.7% is not reached. What was
tried against it, seed 0, validation (test) accuracy: width 4: 99.74%
(99.64%); 30 epochs: 99.66% (99.63%); elastic distortions (alpha 30, sigma 4)
on top: 99.46% (99.36%); model.name=conv_bn_deep (seven 3x3/5x5/4x4 convs):
99.66% (99.61%); batch 64: 99.70% (99.66%); float32, 3 seeds: mean 99.64%
(99.64%). The README's "Beyond the codelab" has the ablations.
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
  config.train.ema_decay = 0.999
  config.optimizer.schedule = 'cosine'
  config.optimizer.learning_rate = 0.01
  config.optimizer.warmup_epochs = 1.0
  return config
