"""Reads MNIST's original IDX files, plain or gzipped, local or on gs://.

An IDX file is a big-endian header (magic number, then one int32 per
dimension) followed by the raw uint8 values. Every way a file can be wrong
(missing, truncated, another file's magic, a header that lies about its
dimensions, trailing data, counts that disagree, labels out of range) raises
DataError with a message that names the file. The header is checked before
anything is allocated, and no file is read past what it promises: a small
gzipped file of a valid header and gigabytes of zeros costs no more than
an honest one.
"""

import gzip
import math
import os
import struct
import zlib

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
# The most values a file may hold (256 MiB, over five times MNIST's
# training images): what a header, true or not, can make this allocate.
MAX_VALUES = 2**28
# The element types IDX defines, by the magic number's third byte. This
# reads uint8 only; the others are named in the refusal.
IDX_TYPES = {0x08: 'uint8', 0x09: 'int8', 0x0B: 'int16', 0x0C: 'int32',
             0x0D: 'float32', 0x0E: 'float64'}
# Read in pieces this large: a plain read of the whole file would hold it
# twice, and a gzipped one could decompress without bound.
_PIECE = 16 * 2**20


def find_file(folder: str, name: str) -> str:
  """Returns the path of `name` or `name.gz` in folder; DataError if neither."""
  for candidate in (name + '.gz', name):
    path = os.path.join(folder, candidate)
    if tf.io.gfile.exists(path):
      return path
  raise DataError(f'{os.path.join(folder, name)}[.gz]: no such file')


def read_idx(path: str, *, magic: int) -> np.ndarray:
  """Reads one IDX file of uint8 values; checks its magic number and size.

  A gzipped file is decompressed as a stream and a plain one read in pieces,
  each no further than its header promises (and one byte more, to see
  trailing data), so a file that lies costs no more than an honest one.
  """
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      gzipped = f.read(2) == b'\x1f\x8b'  # gzip's magic, whatever the name.
      f.seek(0)
      if not gzipped:
        return _read_values(path, f, magic=magic)
      with gzip.GzipFile(fileobj=f) as stream:
        return _read_values(path, stream, magic=magic)
  except tf.errors.OpError as e:
    raise DataError(f'{path}: cannot read ({e.message.splitlines()[0]})') from e
  except (OSError, EOFError, zlib.error) as e:  # Only gzip raises these.
    raise DataError(f'{path}: corrupt or truncated gzip data ({e})') from e


def _read_values(path: str, stream, *, magic: int) -> np.ndarray:
  """The values of the IDX file `stream` reads, checked as read_idx says."""
  head = stream.read(4)
  found = struct.unpack('>i', head)[0] if len(head) == 4 else None
  if found != magic:
    shown = 'none' if found is None else f'{found} ({_meaning(found)})'
    raise DataError(
        f'{path}: wrong magic number {shown}, expected {magic} '
        f'({_meaning(magic)}); is this the right file?')
  ndim = magic & 0xFF
  header_size = 4 * (1 + ndim)
  head += stream.read(header_size - 4)
  if len(head) < header_size:
    raise DataError(
        f'{path}: truncated header ({len(head)} bytes, expected {header_size})')
  # Python ints: a product of int32s cannot overflow.
  dims = struct.unpack(f'>{ndim}i', head[4:])
  if min(dims) < 1:
    raise DataError(f'{path}: its header {list(dims)} has a dimension under 1')
  count = math.prod(dims)
  if count > MAX_VALUES:
    raise DataError(
        f'{path}: its header {list(dims)} says {count:,} values, more than '
        f'the {MAX_VALUES:,} this reads')
  expected = header_size + count
  values = np.empty(count, np.uint8)
  done = 0
  while done < count and (piece := stream.read(min(_PIECE, count - done))):
    values[done:done + len(piece)] = np.frombuffer(piece, np.uint8)
    done += len(piece)
  if done < count:
    raise DataError(
        f'{path}: {header_size + done} bytes, but its header {list(dims)} '
        f'says {expected}; the file is truncated')
  if stream.read(1):
    raise DataError(
        f'{path}: more than the {expected} bytes its header {list(dims)} '
        'says; the file has trailing data')
  return values.reshape(dims)


def _meaning(magic: int) -> str:
  """'0x00000803: uint8, 3 dimensions', or what is wrong with magic."""
  kind = IDX_TYPES.get(magic >> 8)  # Two zero bytes, then the type's code.
  ndim = magic & 0xFF
  meaning = (f'{kind}, {ndim} dimension{"s" * (ndim != 1)}' if kind
             else 'no IDX type')
  return f'0x{magic & 0xFFFFFFFF:08x}: {meaning}'


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
