r"""Reads digits from image files with an exported model.

  mnist-dist-predict --model=WORKDIR/export seven.png photo.jpg
  mnist-dist-predict --model=WORKDIR/export/model.tflite seven.png
  python -m mnist_dist.predict --model=WORKDIR/export --json seven.png

The model is the SavedModel a run exports, or a LiteRT model of it (a
.tflite file, `mnist-dist-export`): the same preprocessing, the same output.

Any PNG, JPEG, GIF, BMP or WebP works: any size up to 50 megapixels, dark ink
on a light background or light on dark, grayscale or color. Each image is first
made to look like an MNIST digit (see `preprocess`), then one line per image is
printed: `PATH: DIGIT (PROB%)`, or with --json one JSON object per line. A
file that cannot be used (not an image, damaged, too large: see
`mnist_dist/tools/images.py`) gets an `error: PATH: ...` line on stderr, the others
are still answered, and the exit code is then 1.
"""

import argparse
import json
import sys

from absl.flags import argparse_flags
import numpy as np
from PIL import Image
import tensorflow as tf

from mnist_dist.base import cli
from mnist_dist.base import errors
from mnist_dist.base import paths
from mnist_dist.outputs import export
from mnist_dist.outputs import litert
from mnist_dist.tools import images

BOX = 20  # MNIST fits each digit into 20x20 pixels...
SIZE = 28  # ...and centres it by its centre of mass in 28x28.


def preprocess(image: Image.Image) -> np.ndarray:
  """Makes any picture of one digit look like MNIST: uint8 [28, 28].

  MNIST was made from black-and-white scans: each digit was scaled to fit a
  20x20 box keeping its aspect ratio (the anti-aliasing makes the grays), then
  placed in a 28x28 field with its centre of mass at the centre, white ink on
  black. This repeats those steps on an arbitrary picture:

  1. grayscale, transparent parts on white, turned upright as EXIF says
     (`images.grayscale`);
  2. ink made light: the image is inverted if its border, which is mostly
     background, is lighter than mid-gray;
  3. black and white: a pixel is ink if it is closer to the brightest ink
     than to the border's level, which also drops paper texture and JPEG noise;
  4. cropped to the ink's bounding box, scaled to fit 20x20, and placed with
     its centre of mass at the centre of 28x28.

  Raises:
    ValueError: the image is one flat color (no ink to read), or its EXIF
      data cannot be read.
  """
  gray = images.grayscale(image)
  background = np.median(
      np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
  if background > 127:
    gray, background = 255 - gray, 255 - background
  if gray.max() <= background:
    raise ValueError('no digit found: the image is one flat color')
  ink = gray > (background + gray.max()) / 2

  rows = np.flatnonzero(ink.any(axis=1))
  columns = np.flatnonzero(ink.any(axis=0))
  ink = ink[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
  height, width = ink.shape
  scale = BOX / max(height, width)
  digit = np.clip(np.asarray(Image.fromarray(ink).convert('L').resize(
      (max(1, round(width * scale)), max(1, round(height * scale))),
      Image.Resampling.LANCZOS), np.float32), 0, 255)

  # MNIST's centre of mass is pixel (14, 14): 14.0 +- 0.3 over its test set.
  weights = digit / digit.sum()
  center_y = (weights.sum(axis=1) * np.arange(digit.shape[0])).sum()
  center_x = (weights.sum(axis=0) * np.arange(digit.shape[1])).sum()
  # Clipped so that a digit whose mass sits far off-centre stays whole.
  top = int(np.clip(round(SIZE // 2 - center_y), 0, SIZE - digit.shape[0]))
  left = int(np.clip(round(SIZE // 2 - center_x), 0, SIZE - digit.shape[1]))
  field = np.zeros((SIZE, SIZE), np.uint8)
  field[top:top + digit.shape[0], left:left + digit.shape[1]] = digit.round()
  return field


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = argparse_flags.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, metavar='MODEL',
                      help='The exported model: WORKDIR/export of a run, or a '
                      '.tflite file (WORKDIR/export/model.tflite).')
  parser.add_argument('--json', action='store_true',
                      help='Print one JSON object per line and image: path, '
                      'digit, probability and all 10 probabilities.')
  parser.add_argument('images', nargs='+', metavar='IMAGE',
                      help='PNG, JPEG, GIF, BMP or WebP files, local or '
                      'gs://.')
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  load_predict_fn = (litert.load_predict_fn if args.model.endswith('.tflite')
                     else export.load_predict_fn)
  try:
    predict = load_predict_fn(args.model)
  # ValueError: not a LiteRT model; WorkdirError: an export cut short.
  except (OSError, ValueError, errors.WorkdirError) as e:
    cli.fail(f'--model={args.model}: {cli.one_line(e)}', errors.EXIT_FAILED)
  except tf.errors.OpError as e:  # A gs:// model out of reach, for one.
    cli.fail(f'--model={args.model}: cannot load it: {paths.cause(e)}',
             errors.EXIT_FAILED)
  readable, digits = [], []
  for path in args.images:
    try:
      digits.append(preprocess(images.load(path)))
      readable.append(path)
    except ValueError as e:
      print(f'error: {path}: {e}', file=sys.stderr)
  if digits:
    probabilities, classes = predict(np.stack(digits))
    for path, p, digit in zip(readable, probabilities, classes):
      if args.json:
        p = [float(f'{q:.4g}') for q in p]  # 4 significant digits.
        print(json.dumps({'path': path, 'digit': int(digit),
                          'probability': p[digit], 'probabilities': p}))
      else:
        print(f'{path}: {digit} ({p[digit]:.1%})')
  if len(readable) < len(args.images):
    sys.exit(errors.EXIT_FAILED)  # Each unreadable file has had its line.


def run():
  """Console-script entry point."""
  cli.run(main, flags_parser=_parse_flags)
