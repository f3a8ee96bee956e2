"""Reads MNIST's original IDX files, plain or gzipped, local or on gs://.

An IDX file is a big-endian header (magic number, then one int32 per
dimension) followed by the raw uint8 values. Every way a file can be wrong
(missing, truncated, another file's magic, counts that disagree, labels out
of range) raises DataError with a message that names the file.
"""

import gzip
import os
import struct

import numpy as np
import tensorflow as tf

from mnist_dist.base import paths
from mnist_dist.base.errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension.
FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
NUM_CLASSES = 10


def find_file(folder: str, name: str) -> str:
  """Returns the path of `name` or `name.gz` in folder; DataError if neither."""
  for candidate in (name + '.gz', name):
    path = os.path.join(folder, candidate)
    if tf.io.gfile.exists(path):
      return path
  raise DataError(f'{os.path.join(folder, name)}[.gz]: no such file')


def _read_bytes(path: str) -> bytes:
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      raw = f.read()
  except tf.errors.OpError as e:
    raise DataError(f'{path}: cannot read ({e.message.splitlines()[0]})') from e
  if raw[:2] == b'\x1f\x8b':  # gzip's magic, whatever the file is called.
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise DataError(f'{path}: corrupt or truncated gzip data ({e})') from e
  return raw


def read_idx(path: str, *, magic: int) -> np.ndarray:
  """Reads one IDX file of uint8 values; checks its magic number and size."""
  raw = _read_bytes(path)
  found = struct.unpack('>i', raw[:4])[0] if len(raw) >= 4 else None
  if found != magic:
    shown = 'none' if found is None else f'{found} (0x{found:08x})'
    raise DataError(
        f'{path}: wrong magic number {shown}, expected {magic} '
        f'(0x{magic:08x}); is this the right file?')
  ndim = magic & 0xFF
  header_size = 4 * (1 + ndim)
  if len(raw) < header_size:
    raise DataError(
        f'{path}: truncated header ({len(raw)} bytes, expected {header_size})')
  dims = struct.unpack(f'>{ndim}i', raw[4:header_size])
  expected = header_size + int(np.prod(dims))
  if len(raw) != expected:
    raise DataError(
        f'{path}: {len(raw)} bytes, but its header {list(dims)} says {expected}; '
        'the file is truncated or has trailing data')
  return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def load_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 28, 28], labels uint8 [N]) of 'train'/'test'."""
  try:
    is_folder = tf.io.gfile.isdir(folder)
    if not is_folder and paths.is_remote(folder):
      tf.io.gfile.stat(folder)  # isdir says False where it cannot look.
  except tf.errors.OpError as e:  # gs:// unreachable or denied, for one.
    raise DataError(f'{folder}: cannot use it (data.dir): '
                    f'{paths.cause(e)}') from e
  if not is_folder:
    raise DataError(f'{folder}: no such folder (data.dir)')
  images_name, labels_name = FILES[split]
  images_path = find_file(folder, images_name)
  labels_path = find_file(folder, labels_name)
  images = read_idx(images_path, magic=IMAGES_MAGIC)
  labels = read_idx(labels_path, magic=LABELS_MAGIC)
  if images.shape[1:] != (28, 28):
    raise DataError(
        f'{images_path}: images are {images.shape[1]}x{images.shape[2]}, '
        'expected 28x28')
  if len(images) != len(labels):
    raise DataError(
        f'{images_path} holds {len(images)} images but {labels_path} holds '
        f'{len(labels)} labels')
  bad = np.flatnonzero(labels >= NUM_CLASSES)
  if bad.size:
    raise DataError(
        f'{labels_path}: label {labels[bad[0]]} at index {bad[0]} is outside '
        f'0..{NUM_CLASSES - 1} ({bad.size} such labels)')
  return images, labels
