"""`mnist-dist-plots` and `python -m mnist_dist.plots`: the command lives in
mnist_dist/outputs/plots.py, imported once TensorFlow is set up (the trainer
imports it too, to draw a run's pictures, and sets TensorFlow up itself)."""

import sys

from mnist_dist.base import console
from mnist_dist.base import stops


def run():
  """Console-script entry point."""
  stops.stop_on_signals()  # A signal while loading is one line too.
  console.import_tensorflow(sys.argv)  # Before the command's module does.
  from mnist_dist.outputs import plots
  plots.run()


if __name__ == '__main__':
  run()
