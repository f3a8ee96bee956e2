"""Shared fixtures. Splits the CPU into 3 logical devices before TF starts,
so that one test process can train on 1, 2 and 3 replicas. Plain helpers are
in helpers.py."""

import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import write_idx
from mnist_dist.data import idx

NUM_LOGICAL_CPUS = 3
MNIST_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                         'mnist')

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


@pytest.fixture
def mnist_dir():
  """The real MNIST IDX files (../shared/mnist), or a skip saying why not.

  In CI (CI set, as CI sets it) a missing MNIST fails the test instead: a
  suite that skipped its real-data tests must not pass there.
  """
  path = os.environ.get('MNIST_DIR', MNIST_DIR)
  if not os.path.exists(os.path.join(path, 't10k-labels-idx1-ubyte.gz')):
    missing = f'the real MNIST is not at {path} (set MNIST_DIR)'
    if os.environ.get('CI'):
      pytest.fail(missing)
    pytest.skip(missing)
  return path


@pytest.fixture
def good_dir(tmp_path):
  """A folder of tiny valid IDX files: 6 train and 4 test examples."""
  rng = np.random.default_rng(0)
  for split, count in (('train', 6), ('test', 4)):
    images_name, labels_name = idx.FILES[split]
    write_idx(tmp_path / (images_name + '.gz'),
              rng.integers(0, 256, (count, 28, 28)), idx.IMAGES_MAGIC,
              compress=True)
    write_idx(tmp_path / labels_name, rng.integers(0, 10, count),
              idx.LABELS_MAGIC)  # Plain, not gzipped: both are accepted.
  return tmp_path


@pytest.fixture(scope='session')
def learnable_dir(tmp_path_factory):
  """A folder of IDX files a model can learn, unlike source=synthetic's
  random images: 1024 training and 1000 test images, each its label's fixed
  random pattern (a quarter of each pixel) under noise (the rest)."""
  path = tmp_path_factory.mktemp('learnable')
  rng = np.random.default_rng(0)
  patterns = rng.integers(0, 256, (10, 28, 28))
  for split, count in (('train', 1024), ('test', 1000)):
    labels = rng.integers(0, 10, count)
    images = (patterns[labels] + 3 * rng.integers(0, 256, (count, 28, 28))) // 4
    images_name, labels_name = idx.FILES[split]
    write_idx(path / images_name, images, idx.IMAGES_MAGIC)
    write_idx(path / labels_name, labels, idx.LABELS_MAGIC)
  return path


# launch_harness.py's asserts get pytest's detailed messages, as in a test file.
pytest.register_assert_rewrite('launch_harness')


@pytest.fixture
def env(tmp_path):
  """For the launcher tests (test_launch_*.py): a launch_harness.Env, the fake
  gcloud, gsutil and pythons first on PATH and runners for the scripts."""
  from launch_harness import Env  # Only the launcher tests need it.
  return Env(tmp_path)
