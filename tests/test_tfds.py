"""The `tfds` source for real: TensorFlow Datasets' own `mnist` builder (its
download manager, gzip extraction, example generation, writing and reading)
run on the four IDX files of the real MNIST without network access, and a
TFDS failure as the one-line error. (`tfds.testing.mock_data`, in
test_input_pipeline.py, replaces all of that with random examples.)"""

import gzip
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import assert_refused
from helpers import ROOT
from helpers import run_main
from helpers import small_config
from mnist_dist.base import errors
from mnist_dist.data import idx
from mnist_dist.data import input_pipeline

# The md5 of each uncompressed file, as MNIST publishes them (and
# ../shared/mnist/README.md lists them).
_MNIST_MD5 = {
    'train-images-idx3-ubyte.gz': '6bbc9ace898e44ae57da46a324031adb',
    'train-labels-idx1-ubyte.gz': 'a25bea736e30d166cdddb491f175f624',
    't10k-images-idx3-ubyte.gz': '2646ac647ad5339dbf082846283269ea',
    't10k-labels-idx1-ubyte.gz': '27ae3e4e09519cfbb04c329615203637',
}


def _digest(path, algorithm, *, gunzip=False) -> str:
  with (gzip.open if gunzip else open)(path, 'rb') as f:
    return hashlib.new(algorithm, f.read()).hexdigest()


def _feed_tfds(tfds_dir: str, mnist_dir: str) -> list[str]:
  """Puts the four files of MNIST_DIR where TFDS's `mnist` builder looks
  before it downloads; returns their paths there.

  A file byte for byte the one TFDS downloads (its sha256 is the one TFDS
  registers for the URL) goes to TFDS's manual folder,
  TFDS_DIR/downloads/manual/, as a user without network access would put it:
  TFDS hashes it and checks it as it would a download. Another copy of the
  same data cannot pass that check (ours of train-images-idx3-ubyte.gz is
  gzipped again: 9,719,438 bytes, the mirror's 9,912,422): it goes in as a
  finished download, under the name TFDS gives one
  (downloads/mnist/<URL sanitized><sha256>.gz) with the .INFO record TFDS
  writes next to it. TFDS takes such a file on its name without hashing it:
  the one check this defeats, for those files only, after checking here that
  their content is MNIST's (the md5 MNIST publishes of the uncompressed file).
  """
  # Imported here: a broken TFDS install (a dependency missing or too new)
  # fails the tests that use it, not the collection of the whole suite.
  import tensorflow_datasets as tfds
  from etils import epath
  from tensorflow_datasets.core.download import resource
  builder = tfds.builder('mnist', data_dir=tfds_dir)
  downloads = os.path.join(tfds_dir, 'downloads')
  fed = []
  for url, url_info in builder.url_infos.items():
    source = os.path.join(mnist_dir, url_info.filename)
    as_downloaded = _digest(source, 'sha256') == url_info.checksum
    if as_downloaded:
      path = os.path.join(downloads, 'manual', url_info.filename)
    else:
      assert (_digest(source, 'md5', gunzip=True) ==
              _MNIST_MD5[url_info.filename]), f'{source} is not MNIST'
      path = os.path.join(downloads, builder.name,
                          resource.get_dl_fname(url, url_info.checksum))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(source, path)
    if not as_downloaded:
      resource.write_info_file(
          url=url, path=epath.Path(path), dataset_name=builder.name,
          original_fname=url_info.filename, url_info=url_info)
    fed.append(path)
  return fed


def _sorted(split: input_pipeline.Split) -> input_pipeline.Split:
  """The split's examples sorted by (image bytes, label)."""
  rows = np.concatenate(
      [split.images.reshape(len(split), -1), split.labels[:, None]], axis=1)
  keys = np.ascontiguousarray(rows).view(f'V{rows.shape[1]}').ravel()
  order = np.argsort(keys, kind='stable')
  return input_pipeline.Split(split.images[order], split.labels[order])


@pytest.mark.slow
def test_the_tfds_builder_gives_the_idx_arrays_on_the_real_mnist(
    tmp_path, mnist_dir):
  """Both sources hold the same 60,000 and 10,000 (image, label) pairs, not
  in the same order: the `tfds` source keeps TFDS's order (its writer
  shuffles the examples by a hash of their index in the files), `idx` the
  files'. So only the multiset is compared."""
  tfds_dir = str(tmp_path / 'tfds')
  fed = _feed_tfds(tfds_dir, mnist_dir)
  config = small_config({'data.source': 'tfds', 'data.tfds_dir': tfds_dir})
  from_tfds = input_pipeline.load(config.data, seed=0)
  # TFDS extracted the files fed to it, not downloads of its own.
  assert sorted(os.listdir(os.path.join(tfds_dir, 'downloads', 'extracted'))
               ) == sorted('GZIP.' + os.path.basename(path) for path in fed)
  config = small_config({'data.source': 'idx', 'data.dir': mnist_dir})
  from_idx = input_pipeline.load(config.data, seed=0)
  for tfds_split, idx_split, count in zip(from_tfds, from_idx,
                                          (60_000, 10_000), strict=True):
    assert tfds_split.images.shape == (count, 28, 28)
    assert tfds_split.images.dtype == tfds_split.labels.dtype == np.uint8
    tfds_split, idx_split = _sorted(tfds_split), _sorted(idx_split)
    np.testing.assert_array_equal(tfds_split.images, idx_split.images)
    np.testing.assert_array_equal(tfds_split.labels, idx_split.labels)


def _not_mnist_in_the_manual_folder(tfds_dir):
  """Four files that are not MNIST where TFDS looks before it downloads:
  its checksum check fails at once, with a message of several lines."""
  manual = tfds_dir / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  for name in (*idx.FILES['train'], *idx.FILES['test']):
    (manual / (name + '.gz')).write_bytes(b'not MNIST')


@pytest.mark.slow  # TFDS's builder in a trainer process.
def test_a_tfds_failure_is_one_line_and_exit_code_2(tmp_path):
  _not_mnist_in_the_manual_folder(tmp_path / 'tfds')
  process = run_main(f'--workdir={tmp_path / "run"}',
                     '--config.data.source=tfds',
                     f'--config.data.tfds_dir={tmp_path / "tfds"}',
                     timeout=120)
  line = assert_refused(process, says=(
      'error: tfds mnist/train: cannot load (NonMatchingChecksumError: '
      'Artifact https://storage.googleapis.com/cvdf-datasets/mnist/'))
  assert line.endswith(
      '); to read the IDX files instead, pass --config.data.dir=FOLDER')
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.slow  # A trainer process.
def test_offline_the_first_start_fails_at_once_in_one_line(tmp_path):
  # A network namespace of its own, with no network: the README's first
  # command on a machine without internet. TFDS alone retries for minutes
  # (209 s measured); the subprocess limit is well below that.
  process = subprocess.run(
      ['unshare', '--net', sys.executable, '-m', 'mnist_dist.main',
       f'--workdir={tmp_path / "run"}', '--config.data.source=tfds',
       f'--config.data.tfds_dir={tmp_path / "tfds"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
  assert_refused(process, code=2, says=(
      'error: tfds mnist/train: cannot download it: storage.googleapis.com '
      'does not resolve ('))
  assert process.stderr.strip().endswith(
      '; to read the IDX files instead, pass --config.data.dir=FOLDER')


def test_an_unusable_tfds_dir_is_a_data_error(tmp_path):
  (tmp_path / 'a_file').write_text('')
  config = small_config({'data.source': 'tfds',
                         'data.tfds_dir': str(tmp_path / 'a_file')})
  with pytest.raises(errors.DataError, match=(
      r'^tfds mnist/train: cannot load \(NotADirectoryError: .*a_file/'
      r'downloads.*\); to read the IDX files instead')):
    input_pipeline.load(config.data, seed=0)
