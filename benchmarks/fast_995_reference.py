r"""configs/fast_995.py as it was before issue #34: the reference for that
issue's goal (the new fast_995.py at most 0.4x its median time from launch
to the last evaluation, both timed in the same session):

  python -m benchmarks.time_to_accuracy \
      --config=benchmarks/fast_995_reference.py --target=0.995 \
      --data_dir=../shared/mnist --out=/tmp/tta_995_ref

fast.py's net (conv_pool) twice as wide, for 8 epochs at batch 256, with a
warm-up of 1.5 epochs; everything else as the new fast_995.py, which it is
built from, so the two differ only where the issue changed the recipe.
"""

import runpy

from mnist_dist.base import cli


def get_config():
  config = runpy.run_path(cli.config_path('fast_995'))['get_config']()
  config.model.width = 2
  config.train.epochs = 8
  config.optimizer.warmup_epochs = 1.5
  return config
