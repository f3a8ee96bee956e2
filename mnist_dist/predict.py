"""`mnist-dist-predict` and `python -m mnist_dist.predict`: the command lives
in mnist_dist/tools/predict.py, imported once TensorFlow is set up."""

import sys

from mnist_dist.base import console
from mnist_dist.base import stops


def run():
  """Console-script entry point."""
  stops.stop_on_signals()  # A signal while loading is one line too.
  console.import_tensorflow(sys.argv)  # Before the command's module does.
  from mnist_dist.tools import predict
  predict.run()


if __name__ == '__main__':
  run()
