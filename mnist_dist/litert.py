"""`mnist-dist-export` and `python -m mnist_dist.litert`: the command lives in
mnist_dist/outputs/litert.py, imported once TensorFlow is set up (the trainer
imports it too, to write a run's .tflite, and sets TensorFlow up itself)."""

import sys

from mnist_dist.base import console
from mnist_dist.base import stops


def run():
  """Console-script entry point."""
  stops.stop_on_signals()  # A signal while loading is one line too.
  console.import_tensorflow(sys.argv)  # Before the command's module does.
  from mnist_dist.outputs import litert
  litert.run()


if __name__ == '__main__':
  run()
