"""Errors filed by cause: a worker's own storage failure is its own one
line (retried when a retry can help), never a lost peer; a lost peer is
still one; TFDS's failures told apart: the network for now, the data or the
machine for good, and bugs with their traceback."""

import errno
import json

import ml_collections
import pytest
import tensorflow as tf

from helpers import small_config
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.data import input_pipeline
from mnist_dist.distribution import cluster
from mnist_dist.outputs import actions

_GS = 'gs://bucket/run'
# What TensorFlow's GCS file system raised for a write the store refused
# for now (a 503), and what a survivor's collective raises for a lost peer.
_UPLOAD_503 = tf.errors.UnavailableError(
    None, None, 'Error executing an HTTP request: HTTP response code 503 '
    f'with body ... when initiating an upload to {_GS}/metrics.jsonl')
_PEER_GONE = tf.errors.UnavailableError(
    None, None, 'Collective ops is aborted by: Error reported from '
    '/job:worker/task:1: The following tasks are unhealthy (stopped sending '
    'heartbeats):\n/job:worker/replica:0/task:1')


@pytest.mark.parametrize('error, kind, says', [
    (_UPLOAD_503, errors.TransientError, 'its storage failed for now'),
    (tf.errors.DeadlineExceededError(
        None, None, f'{_GS}/checkpoints/ckpt-9.index: timed out'),
     errors.TransientError, 'DeadlineExceededError'),
    (tf.errors.ResourceExhaustedError(
        None, None, f'{_GS}/checkpoints/ckpt-9.data: No space left on device'),
     errors.WorkdirError, r'fix it \(space, permissions\)'),
    (tf.errors.PermissionDeniedError(None, None, f'{_GS}/lock: 403'),
     errors.WorkdirError, 'PermissionDeniedError'),
])
def test_a_storage_error_of_the_workdir_is_its_own_line(error, kind, says):
  with pytest.raises(kind, match=says) as raised:
    with workdir_lib.storage_failures(_GS):
      raise error
  assert raised.value.__cause__ is error


def test_a_local_full_disk_is_named_by_the_file_it_failed_on(tmp_path):
  with pytest.raises(errors.WorkdirError, match='No space left on device'):
    with workdir_lib.storage_failures(str(tmp_path)):
      raise OSError(errno.ENOSPC, 'No space left on device',
                    str(tmp_path / 'metrics.jsonl.tmp-1-ab'))


@pytest.mark.parametrize('error', [
    tf.errors.UnavailableError(None, None, 'somewhere else: unavailable'),
    _PEER_GONE,
    ValueError(f'{_GS}: not an OSError'),
])
def test_what_is_not_a_storage_error_of_the_workdir_passes(error):
  with pytest.raises(type(error)) as raised:
    with workdir_lib.storage_failures(_GS):
      raise error
  assert raised.value is error


@pytest.fixture
def two_workers(monkeypatch):
  monkeypatch.setenv('TF_CONFIG', json.dumps({
      'cluster': {'worker': ['127.0.0.1:1000', '127.0.0.1:1001']},
      'task': {'type': 'worker', 'index': 0}}))
  return ml_collections.ConfigDict({'strategy': 'multi_worker_mirrored'})


def test_the_chiefs_own_write_error_is_not_a_lost_peer(two_workers,
                                                       tmp_path):
  # Before: any UnavailableError in a cluster was "lost worker 1", exit 76.
  with pytest.raises(errors.TransientError, match='storage failed for now'):
    with cluster.peer_failures(two_workers, checkpoint_dir=str(tmp_path)):
      with workdir_lib.storage_failures(_GS):
        raise _UPLOAD_503


def test_a_collective_that_names_the_lost_peer_is_still_a_lost_peer(
    two_workers, tmp_path):
  with pytest.raises(errors.WorkerLost, match=r'worker 1 \(127.0.0.1:1001\)'):
    with cluster.peer_failures(two_workers, checkpoint_dir=str(tmp_path)):
      with workdir_lib.storage_failures(_GS):
        raise _PEER_GONE


class _StoreDownAt(actions.Action):
  """metrics.jsonl's store refusing a write for now, at one epoch's record."""

  def __init__(self, workdir: str, epoch: int):
    self.workdir, self.epoch = workdir, epoch

  def record(self, context, record):
    if record['epoch'] == self.epoch:
      raise tf.errors.UnavailableError(
          None, None, f'{self.workdir}/metrics.jsonl: 503 Service Unavailable')


def test_a_transient_storage_failure_stops_the_run_and_the_next_start_continues(
    tmp_path):
  config = small_config({'model.name': 'dense', 'train.epochs': 2})
  workdir = str(tmp_path)
  with pytest.raises(errors.TransientError, match='run the same command'):
    train.train_and_evaluate(config, workdir,
                             actions=[_StoreDownAt(workdir, epoch=2)])
  resumed = train.train_and_evaluate(config, workdir)
  # Epoch 1's checkpoint is where it continues: epoch 2 is trained again.
  assert [record['epoch'] for record in resumed.metrics] == [2]


def _tfds_raising(monkeypatch, error):
  def fail(split, data_dir):
    del split, data_dir
    raise error
  monkeypatch.setattr(input_pipeline, '_tfds_dataset', fail)


@pytest.mark.parametrize('error, kind, says', [
    # The network, mid-download: worth another try.
    (ConnectionResetError(errno.ECONNRESET, 'Connection reset by peer'),
     errors.TransientError, 'the download failed for now'),
    (TimeoutError('The read operation timed out'), errors.TransientError,
     'run the same command again'),
    # The machine or the data: another try fails the same way.
    (OSError(errno.ENOSPC, 'No space left on device'), errors.DataError,
     'cannot load'),
    (RuntimeError('NonMatchingChecksumError: Artifact ...'), errors.DataError,
     'cannot load'),
])
def test_tfds_failures_are_told_apart(monkeypatch, error, kind, says):
  _tfds_raising(monkeypatch, error)
  config = small_config({'data.source': 'tfds'})
  with pytest.raises(kind, match=says):
    input_pipeline.load(config.data, seed=0)


def test_a_bug_under_tfds_keeps_its_traceback(monkeypatch):
  # Before: every exception was exit 2, "cannot load", never retried or seen.
  _tfds_raising(monkeypatch, TypeError("'NoneType' object is not iterable"))
  config = small_config({'data.source': 'tfds'})
  with pytest.raises(TypeError):
    input_pipeline.load(config.data, seed=0)


@pytest.mark.parametrize('message', [
    # What survivors raised in tests/test_cluster.py and test_chaos.py runs.
    'Graph execution error:\n\nDetected at node while/adam/CollectiveReduceV2',
    'Deadline Exceeded\nAdditional GRPC error information from remote target '
    '/job:worker/replica:0/task:0 while calling '
    '/tensorflow.CoordinationService/RegisterTask',
    'Socket closed',
])
def test_what_the_cluster_says_is_a_lost_peer(two_workers, tmp_path,
                                              message):
  with pytest.raises(errors.WorkerLost):
    with cluster.peer_failures(two_workers, checkpoint_dir=str(tmp_path)):
      raise tf.errors.UnavailableError(None, None, message)


def test_an_error_the_cluster_did_not_report_is_not_a_lost_peer(
    two_workers, tmp_path):
  # Before: any UnavailableError was "lost a worker" (76), retried forever
  # by a launcher while the real cause (here, a service of the user's
  # model) went unseen.
  error = tf.errors.UnavailableError(None, None, 'lookup service: 503')
  with pytest.raises(tf.errors.UnavailableError) as raised:
    with cluster.peer_failures(two_workers, checkpoint_dir=str(tmp_path)):
      raise error
  assert raised.value is error
