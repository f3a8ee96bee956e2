r"""The SavedModel export as a LiteRT model (.tflite), float or int8, and run.

  mnist-dist-export WORKDIR --format=litert     # WORKDIR/export/model.tflite
  mnist-dist-export WORKDIR --format=litert --quantize=int8
  python -m mnist_dist.litert WORKDIR --format=litert

--quantize=int8 writes WORKDIR/export/model_int8.tflite.

LiteRT (formerly TensorFlow Lite) is what phones and embedded boards run. The
.tflite file is converted from the SavedModel of `export.export_saved_model`,
so it has the same one signature, `serving_default`: uint8 images [N, 28, 28]
(input `images`) in, `probabilities` (float32 [N, 10]) and `classes` (int64
[N]) out, scaling, softmax and argmax included.

Why from the SavedModel: `TFLiteConverter.from_keras_model` fails on Keras 3
models (tensorflow/tensorflow#63867, #62989), and Keras' own
`model.export(format='litert')` exists only in recent Keras and exports the
bare model, logits out. `TFLiteConverter.from_saved_model` converts the
serving signature itself, on every TensorFlow this project supports.

The models are run with the interpreter of the `ai-edge-litert` package:
`tf.lite.Interpreter` is deprecated in its favour, and it is what a device
runs, without TensorFlow.

Checked, not assumed: the command runs each model it writes with that
interpreter on the run's whole test split and prints its size and accuracy
next to the SavedModel's, and the share of images on which both give the same
digit. A float model that disagrees with the SavedModel on more than 0.1% of
them is an error, and is not written.
"""

import argparse
import dataclasses
import os
from typing import Callable
import warnings

from absl import logging
from absl.flags import argparse_flags
from ai_edge_litert.interpreter import Interpreter
import numpy as np
import tensorflow as tf

from mnist_dist.base import cli
from mnist_dist.base import errors
from mnist_dist.base import paths
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.data import input_pipeline
from mnist_dist.outputs import actions
from mnist_dist.outputs import export

QUANTIZATIONS = ('none', 'int8')
FILE_NAMES = {'none': 'model.tflite', 'int8': 'model_int8.tflite'}
# Float arithmetic in another order may flip a near tie, hardly more.
MIN_FLOAT_AGREEMENT = 0.999
CALIBRATION_EXAMPLES = 500


def convert(saved_model_dir: str, *, quantize: str = 'none',
            calibration_images: np.ndarray | None = None) -> bytes:
  """The SavedModel at saved_model_dir as a LiteRT flatbuffer.

  Args:
    saved_model_dir: an export of `export.export_saved_model`.
    quantize: 'none' keeps float32 weights and arithmetic; 'int8' quantizes
      weights and activations to int8 after training, each tensor's range
      calibrated by running `calibration_images` through the model. The
      input stays uint8 and the outputs float32 and int64, as in the
      SavedModel: only the inside changes.
    calibration_images: uint8 [N, 28, 28], for 'int8': a few hundred
      training images cover the ranges the test images reach.

  Returns:
    The .tflite file's content.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[export.SIGNATURE])
  if quantize == 'int8':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        {'images': image[np.newaxis]} for image in calibration_images)
  elif quantize != 'none':
    raise ValueError(f'quantize={quantize!r}: one of {QUANTIZATIONS}')
  with warnings.catch_warnings():
    # Calibration runs tf.lite.Interpreter, which then warns that it is
    # deprecated: a note for TensorFlow, not for the user of this function.
    warnings.filterwarnings('ignore', category=UserWarning,
                            module='tensorflow.lite.python.interpreter')
    return converter.convert()


def predict_fn(
    model: bytes, *, batch_size: int = 1000
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Returns predict(images) -> (probabilities, classes) for a .tflite model.

  The same contract as `export.load_predict_fn`: uint8 images [N, 28, 28]
  in, float32 [N, 10] and int64 [N] numpy arrays out, batch_size at a time.
  """
  runner = Interpreter(model_content=model).get_signature_runner(
      export.SIGNATURE)

  def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The runner resizes the input to each batch's size.
    outputs = [runner(images=images[i:i + batch_size])
               for i in range(0, len(images), batch_size)]
    return (np.concatenate([o['probabilities'] for o in outputs]),
            np.concatenate([o['classes'] for o in outputs]))

  return predict


def load_predict_fn(
    path: str, *, batch_size: int = 1000
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """`predict_fn` of the .tflite file at path (local or gs://).

  Raises:
    ValueError: the file is empty, or not a LiteRT model.
    tf.errors.OpError: it cannot be read.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    model = f.read()
  if not model:  # The interpreter would say that no model was given.
    raise ValueError('empty file')
  return predict_fn(model, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class Written:
  """A .tflite file the command wrote, and how it does on the test split."""
  path: str
  size_bytes: int
  accuracy: float
  saved_model_accuracy: float
  agreement: float  # The share of test images with the SavedModel's digit.
  examples: int

  def __str__(self):
    return (f'{self.path}: {self.size_bytes:,} bytes; on the {self.examples} '
            f'test images: accuracy {self.accuracy:.2%} (the SavedModel '
            f'{self.saved_model_accuracy:.2%}), the same digit as the '
            f'SavedModel on {self.agreement:.2%}')


def tflite_path(workdir: str, *, quantize: str = 'none') -> str:
  """Where the .tflite of `quantize` goes: WORKDIR/export/FILE_NAMES[...]."""
  return os.path.join(workdir_lib.path(workdir, workdir_lib.EXPORT),
                      FILE_NAMES[quantize])


def write_tflite(workdir: str, *, quantize: str = 'none') -> Written:
  """Converts WORKDIR/export to WORKDIR/export/FILE_NAMES[quantize], checked.

  int8 models are calibrated on CALIBRATION_EXAMPLES training images of the
  run's own data, drawn with its seed.

  Raises:
    FileNotFoundError: WORKDIR has no config.json or no export.
    errors.WorkdirError: the export is incomplete (`export.check_complete`).
    ValueError: the data cannot be loaded, or the float model disagrees with
      the SavedModel on more than 1 - MIN_FLOAT_AGREEMENT of the test images.
  """
  config = workdir_lib.read_config(workdir)
  export_dir = workdir_lib.path(workdir, workdir_lib.EXPORT)
  export.check_complete(export_dir)
  train, test = input_pipeline.load(config.data, seed=config.seed)
  rng = np.random.default_rng(config.seed)
  calibration = train.images[rng.choice(
      len(train), min(CALIBRATION_EXAMPLES, len(train)), replace=False)]
  model = convert(export_dir, quantize=quantize,
                  calibration_images=calibration)

  _, reference = export.load_predict_fn(export_dir)(test.images)
  _, classes = predict_fn(model)(test.images)
  agreement = float(np.mean(classes == reference))
  path = tflite_path(workdir, quantize=quantize)
  if quantize == 'none' and agreement < MIN_FLOAT_AGREEMENT:
    raise ValueError(
        f'{path}: not written: the converted model gives the SavedModel\'s '
        f'digit on only {agreement:.2%} of the {len(test)} test images')
  workdir_lib.write_atomically(path, model)
  return Written(
      path=path, size_bytes=len(model),
      accuracy=float(np.mean(classes == test.labels)),
      saved_model_accuracy=float(np.mean(reference == test.labels)),
      agreement=agreement, examples=len(test))


class LiteRT(actions.Action):
  """The .tflite of `quantize` at the end of a run, if new or missing.

  One that fails its check on the test set is not written: the SavedModel
  is there, the run has succeeded, and a warning says why.
  """

  def __init__(self, *, quantize: str):
    self._quantize = quantize

  def finish(self, context, *, trained):
    if trained or not tf.io.gfile.exists(
        tflite_path(context.workdir, quantize=self._quantize)):
      try:
        logging.info('Wrote %s', write_tflite(context.workdir,
                                              quantize=self._quantize))
      except ValueError as e:
        logging.warning('%s', e)


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = argparse_flags.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdir', metavar='WORKDIR',
                      help='The --workdir of a finished run (local or gs://).')
  parser.add_argument('--format', required=True, choices=['litert'],
                      help='What to write: litert, a .tflite file in '
                      'WORKDIR/export (the SavedModel there is written by '
                      'training).')
  parser.add_argument('--quantize', choices=QUANTIZATIONS, default='none',
                      help='int8: post-training integer quantization, '
                      'calibrated on training images (default: %(default)s).')
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  try:
    print(write_tflite(args.workdir, quantize=args.quantize))
  # errors.DataError is a ValueError.
  except (OSError, ValueError, errors.WorkdirError) as e:
    cli.fail(cli.one_line(e), errors.EXIT_FAILED)
  except tf.errors.OpError as e:  # A gs:// workdir out of reach, for one.
    cli.fail(f'{args.workdir}: {paths.cause(e)}', errors.EXIT_FAILED)


def run():
  """Console-script entry point."""
  cli.run(main, flags_parser=_parse_flags)
