r"""The trainer, its checkpoint writes slowed down as on a slow store.

  SLOW_STORE_S=2 python -m benchmarks.slow_store --workdir=/tmp/slow \
      --config.data.dir=../shared/mnist

Runs `python -m mnist_dist.main` (same flags) with every checkpoint write
SLOW_STORE_S seconds longer: the thread that writes sleeps that long before
TensorFlow writes the files, as an upload to a distant store (a bucket in
another region, a busy network disk) holds its writer up without using the
CPU. It also says `slow store: writing PREFIX` on stderr as each write
starts, so that a test can act while one is under way. What waits for a
write is then as in a real slow store: the training thread (synchronous
saves), or the writer thread only (checkpoint.async_save); the checkpoint
is listed after the delay, once written.
"""

import os
import sys
import time

# First: it sets TensorFlow's logging up before TensorFlow loads.
from mnist_dist import main  # pylint: disable=g-bad-import-order

from tensorflow.python.checkpoint import checkpoint as tf_checkpoint


def slow_down_checkpoint_writes(seconds: float) -> None:
  """Makes every tf.train.Checkpoint write take `seconds` longer."""
  write = tf_checkpoint.TrackableSaver.save

  def slow_write(saver, file_prefix, *args, **kwargs):
    print(f'slow store: writing {file_prefix}', file=sys.stderr, flush=True)
    time.sleep(seconds)
    return write(saver, file_prefix, *args, **kwargs)
  tf_checkpoint.TrackableSaver.save = slow_write


if __name__ == '__main__':
  slow_down_checkpoint_writes(float(os.environ.get('SLOW_STORE_S', '0')))
  main.run()
