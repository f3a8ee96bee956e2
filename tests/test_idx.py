"""The IDX reader on the real files and on every way a file can be broken."""

import gzip
import hashlib
import os

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
    ({'cut': 100}, 'truncated or has trailing data'),
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
  with pytest.raises(errors.DataError, match='truncated or has trailing data'):
    idx.load_split(str(good_dir), 'test')


def test_images_of_another_size_are_named(good_dir):
  path = _break(good_dir, idx.FILES['test'][0], array=np.zeros((4, 28, 27)),
                magic=idx.IMAGES_MAGIC)
  with pytest.raises(errors.DataError,
                     match=f'{path}: images are 28x27, expected 28x28'):
    idx.load_split(str(good_dir), 'test')


def test_truncated_gzip_is_named(good_dir):
  path = good_dir / (idx.FILES['train'][0] + '.gz')
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(errors.DataError, match='corrupt or truncated gzip'):
    idx.load_split(str(good_dir), 'train')


def test_missing_file_and_folder_are_named(good_dir):
  os.remove(good_dir / idx.FILES['test'][1])
  with pytest.raises(errors.DataError, match='t10k-labels-idx1-ubyte.*no such file'):
    idx.load_split(str(good_dir), 'test')
  with pytest.raises(errors.DataError, match='no such folder'):
    idx.load_split(str(good_dir / 'nope'), 'test')
