"""The IDX reader on the real files and on every way a file can be broken."""

import gzip
import hashlib
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from helpers import write_idx
from mnist_dist.base import errors
from mnist_dist.data import idx


def test_reads_the_real_mnist(mnist_dir):
  train_images, train_labels = idx.load_split(mnist_dir, 'train')
  test_images, test_labels = idx.load_split(mnist_dir, 'test')
  assert train_images.shape == (60_000, 28, 28)
  assert test_images.shape == (10_000, 28, 28)
  assert train_images.dtype == np.uint8 and train_labels.dtype == np.uint8
  assert list(train_labels[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert list(test_labels[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
  assert np.bincount(test_labels).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  # The md5 of the uncompressed labels file (shared/mnist/README.md).
  with gzip.open(os.path.join(mnist_dir, 't10k-labels-idx1-ubyte.gz')) as f:
    assert hashlib.md5(f.read()).hexdigest() == (
        '27ae3e4e09519cfbb04c329615203637')


def test_reads_plain_and_gzipped_files(tmp_path):
  # Every pixel different from its neighbours (row, column and example), so
  # a value read from the wrong offset or axis order shows.
  images = (np.arange(5 * 28 * 28) * 7 % 256).reshape(5, 28, 28)
  labels = np.array([3, 0, 9, 4, 1])
  magics = (idx.IMAGES_MAGIC, idx.LABELS_MAGIC)
  for split, gzipped in (('train', (True, False)), ('test', (False, True))):
    for name, array, magic, compress in zip(
        idx.FILES[split], (images, labels), magics, gzipped, strict=True):
      write_idx(tmp_path / (name + '.gz' * compress), array, magic,
                compress=compress)
    read_images, read_labels = idx.load_split(str(tmp_path), split)
    assert read_images.dtype == read_labels.dtype == np.uint8
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def _break(good_dir, name, **kwargs):
  """Rewrites one file of good_dir; returns its path."""
  for candidate in (name, name + '.gz'):
    if (good_dir / candidate).exists():
      os.remove(good_dir / candidate)
  path = good_dir / name
  defaults = {'array': np.zeros(4, np.uint8), 'magic': idx.LABELS_MAGIC}
  write_idx(path, **{**defaults, **kwargs})
  return str(path)


@pytest.mark.parametrize('damage,message', [
    ({'cut': 100}, r'3052 bytes, but its header \[4, 28, 28\] says 3152; '
     'the file is truncated'),
    ({'array': np.zeros(6), 'magic': 0x1234}, 'wrong magic number 4660'),
    ({'array': np.zeros((0,)), 'cut': 2}, 'truncated header'),
    ({'array': np.zeros((0,)), 'cut': 7}, 'wrong magic number none'),
])
def test_broken_images_file_is_named(good_dir, damage, message):
  name = idx.FILES['test'][0]
  kwargs = {'array': np.zeros((4, 28, 28)), 'magic': idx.IMAGES_MAGIC,
            **damage}
  path = _break(good_dir, name, **kwargs)
  with pytest.raises(errors.DataError, match=message) as error:
    idx.load_split(str(good_dir), 'test')
  assert path in str(error.value)


def test_labels_with_images_magic_are_refused(good_dir):
  path = _break(good_dir, idx.FILES['test'][1], array=np.zeros((4, 28, 28)),
                magic=idx.IMAGES_MAGIC)
  with pytest.raises(errors.DataError, match=f'{path}: wrong magic number 2051'):
    idx.load_split(str(good_dir), 'test')


def test_count_mismatch_is_named(good_dir):
  _break(good_dir, idx.FILES['test'][1], array=np.zeros(3))
  with pytest.raises(errors.DataError, match='holds 4 images but .* holds 3'):
    idx.load_split(str(good_dir), 'test')


def test_label_out_of_range_is_named(good_dir):
  # 10, the first label out of range: a check off by one lets it through.
  _break(good_dir, idx.FILES['test'][1], array=np.array([1, 2, 10, 12]))
  with pytest.raises(errors.DataError,
                     match=r'label 10 at index 2 is outside 0\.\.9 \(2 such'):
    idx.load_split(str(good_dir), 'test')


def test_trailing_data_is_named(good_dir):
  path = good_dir / idx.FILES['test'][1]  # Plain: the byte is outside gzip.
  path.write_bytes(path.read_bytes() + b'\0')
  with pytest.raises(errors.DataError, match=(
      r'more than the 12 bytes its header \[4\] says; the file has '
      'trailing data')):
    idx.load_split(str(good_dir), 'test')


def _write_raw(path, magic, dims, data=b''):
  """Writes an IDX header of any dimensions, even impossible ones."""
  path.write_bytes(struct.pack(f'>{1 + len(dims)}i', magic, *dims) + data)
  return str(path)


@pytest.mark.parametrize('magic,dims,size,message', [
    # As many bytes as the product says: only the signs are wrong.
    (idx.IMAGES_MAGIC, (-1, -28, 28), 784,
     r'its header \[-1, -28, 28\] has a dimension under 1'),
    (idx.IMAGES_MAGIC, (0, 28, 28), 0, 'has a dimension under 1'),
    # 2**64 values: 0 in int64, as many as the file holds.
    (idx.IMAGES_MAGIC, (2**30, 2**30, 16), 0,
     'says 18,446,744,073,709,551,616 values, more than the 268,435,456'),
    (idx.IMAGES_MAGIC, (2**20, 28, 28), 0,
     'says 822,083,584 values, more than the 268,435,456 this reads'),
    # float32 images: an IDX type, not the one expected.
    (0x0D03, (1, 28, 28), 4 * 784,
     r'wrong magic number 3331 \(0x00000d03: float32, 3 dimensions\), '
     r'expected 2051 \(0x00000803: uint8, 3 dimensions\)'),
    (0x0703, (1, 28, 28), 784, r'\(0x00000703: no IDX type\)'),
])
def test_a_header_that_lies_is_refused(tmp_path, magic, dims, size, message):
  path = _write_raw(tmp_path / 'images', magic, dims, bytes(size))
  with pytest.raises(errors.DataError, match=f'^{path}: .*{message}'):
    idx.read_idx(path, magic=idx.IMAGES_MAGIC)


@pytest.mark.parametrize('compress', [False, True])
def test_a_file_is_read_no_further_than_its_header_says(tmp_path, compress):
  # 4 labels, then 200 MB of zeros: gzipped, a bomb of 200 kB, made in
  # pieces; plain, a sparse file.
  path = tmp_path / 'labels'
  _write_raw(path, idx.LABELS_MAGIC, (4,), bytes(4))
  zeros = 200 * 2**20
  if compress:
    compressor = zlib.compressobj(wbits=31)  # The gzip format.
    pieces = [compressor.compress(path.read_bytes())]
    pieces += [compressor.compress(bytes(2**20)) for _ in range(zeros >> 20)]
    path.write_bytes(b''.join(pieces) + compressor.flush())
  else:
    with open(path, 'r+b') as f:
      f.truncate(12 + zeros)
  tracemalloc.start()
  try:
    with pytest.raises(errors.DataError, match='the file has trailing data'):
      idx.read_idx(str(path), magic=idx.LABELS_MAGIC)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 2**20


def test_images_of_another_size_are_named(good_dir):
  path = _break(good_dir, idx.FILES['test'][0], array=np.zeros((4, 28, 27)),
                magic=idx.IMAGES_MAGIC)
  with pytest.raises(errors.DataError,
                     match=f'{path}: images are 28x27, expected 28x28'):
    idx.load_split(str(good_dir), 'test')


@pytest.mark.parametrize('damage', [
    lambda data: data[:200],
    # The first block's header, past gzip's: zlib's error, not an OSError.
    lambda data: data[:10] + b'\xff' * 4 + data[14:],
])
def test_truncated_or_damaged_gzip_is_named(good_dir, damage):
  path = good_dir / (idx.FILES['train'][0] + '.gz')
  path.write_bytes(damage(path.read_bytes()))
  with pytest.raises(errors.DataError, match='corrupt or truncated gzip'):
    idx.load_split(str(good_dir), 'train')


def test_missing_file_and_folder_are_named(good_dir):
  os.remove(good_dir / idx.FILES['test'][1])
  with pytest.raises(errors.DataError, match='t10k-labels-idx1-ubyte.*no such file'):
    idx.load_split(str(good_dir), 'test')
  with pytest.raises(errors.DataError, match='no such folder'):
    idx.load_split(str(good_dir / 'nope'), 'test')
