"""That TensorFlow still honours each internal of base/tf_internals.py, and
that one gone or changed is one line naming the TensorFlow version."""

import json
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.data.ops import multi_device_iterator_ops
from tensorflow.python.distribute import collective_all_reduce_strategy
from tensorflow.python.tpu import tpu_strategy_util
# pylint: enable=g-direct-tensorflow-import

from helpers import ROOT
from mnist_dist.base import errors
from mnist_dist.base import tf_internals


def _assert_unsupported(info, what: str):
  """The error is one line naming the TensorFlow version and what is gone."""
  message = str(info.value)
  assert '\n' not in message
  assert f'TensorFlow {tf.__version__}: ' in message
  assert what in message


# --- the per-device datasets' options ---


def _no_autotune() -> tf.data.Options:
  options = tf.data.Options()
  options.autotune.enabled = False
  return options


def _distributed_iterator():
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  return iter(strategy.distribute_datasets_from_function(
      lambda ctx: tf.data.Dataset.range(64).batch(2)))


def _per_device_datasets(iterator) -> list[tf.data.Dataset]:
  """The datasets tf.distribute put on each device, for one worker."""
  # pylint: disable=protected-access
  (worker,) = iterator._iterators
  return [device._dataset for device in worker._iterator._device_iterators]


def test_the_per_device_datasets_get_the_options():
  with tf_internals.device_datasets_with(_no_autotune()):
    inside = _per_device_datasets(_distributed_iterator())
  outside = _per_device_datasets(_distributed_iterator())
  assert len(inside) == 2
  assert all(d.options().autotune.enabled is False for d in inside)
  # TensorFlow's own, once the context is left.
  assert all(d.options().autotune.enabled is not False for d in outside)


def test_the_options_reach_only_the_thread_in_the_context():
  others = []
  with tf_internals.device_datasets_with(_no_autotune()):
    other = threading.Thread(
        target=lambda: others.extend(_per_device_datasets(
            _distributed_iterator())))
    other.start()
    other.join()
    _distributed_iterator()
  assert len(others) == 2
  assert all(d.options().autotune.enabled is not False for d in others)


def test_without_the_per_device_function_it_says_so(monkeypatch):
  monkeypatch.delattr(multi_device_iterator_ops, '_create_device_dataset')
  with pytest.raises(errors.TensorFlowUnsupported) as info:
    with tf_internals.device_datasets_with(_no_autotune()):
      pass
  _assert_unsupported(info, '_create_device_dataset')


def test_per_device_datasets_made_another_way_are_noticed(caplog):
  # As when TensorFlow no longer calls the function it wraps: a warning
  # naming the version, and the run goes on.
  with tf_internals.device_datasets_with(_no_autotune()):
    pass
  assert 'called to make the per-device datasets' in caplog.text
  assert tf.__version__ in caplog.text


# --- a checkpoint that writes stand-ins ---


def test_a_save_writes_the_stand_ins(tmp_path):
  variables = {'tf': tf.Variable([1.0, 2.0]), 'keras': keras.Variable([5.0])}
  stand_ins = {'tf': tf.Variable([3.0, 4.0]), 'keras': tf.Variable([6.0])}
  checkpoint = tf.train.Checkpoint(**variables)
  in_place = tf_internals.saved_in_place(checkpoint)
  for name, variable in variables.items():
    in_place[variable] = stand_ins[name]
  path = checkpoint.save(str(tmp_path / 'ckpt'))
  for name, stand_in in stand_ins.items():
    np.testing.assert_array_equal(
        tf.train.load_variable(path, f'{name}/.ATTRIBUTES/VARIABLE_VALUE'),
        stand_in.numpy())
  # The objects saved are still the variables: a restore reaches them.
  tf.train.Checkpoint(**variables).restore(path).assert_consumed()
  np.testing.assert_array_equal(variables['tf'].numpy(), [3.0, 4.0])


def test_a_checkpoint_without_the_object_map_says_so(monkeypatch):
  checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
  # pylint: disable-next=protected-access
  monkeypatch.delattr(checkpoint._saver, '_object_map')
  with pytest.raises(errors.TensorFlowUnsupported) as info:
    tf_internals.saved_in_place(checkpoint)
  _assert_unsupported(info, '_object_map')


@pytest.mark.parametrize('make, expected', [
    (lambda: tf.Variable(1.0), True),
    (lambda: keras.Variable(1.0), True),
    (lambda: tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, -1),
     True),  # Checkpointed, but no variable: no stand-in can replace it.
    (tf.Module, False),
    (lambda: keras.layers.Dense(2), False),
    (keras.optimizers.Adam, False),
])
def test_what_saves_tensors_of_its_own(make, expected):
  assert tf_internals.saves_own_tensors(make()) is expected


def test_without_the_serializing_methods_it_says_so(monkeypatch):
  monkeypatch.delattr(tf.__internal__.tracking.Trackable,
                      '_serialize_to_tensors')
  with pytest.raises(errors.TensorFlowUnsupported) as info:
    tf_internals.saves_own_tensors(tf.Module())
  _assert_unsupported(info, '_serialize_to_tensors')


# --- the coordination service's timeouts ---

_COORDINATION = r'''
import json, sys
import tensorflow as tf
from tensorflow.python.eager import context
from mnist_dist.base import tf_internals
cluster = tf.train.ClusterSpec(json.loads(sys.argv[1]))
tf_internals.configure_coordination_service(
    tf.train.ClusterSpec({}), heartbeat_s=1, join_s=1)
assert context.context().coordination_service is None  # No cluster: no-op.
tf_internals.configure_coordination_service(cluster, heartbeat_s=7, join_s=9)
tf_internals.configure_coordination_service(cluster, heartbeat_s=1, join_s=1)
service = context.context().coordination_service
print(json.dumps({
    'type': service.service_type, 'leader': service.service_leader,
    'heartbeat_ms': service.heartbeat_timeout_in_ms,
    'join_ms': service.cluster_register_timeout_in_ms,
    'jobs': {job.name: job.num_tasks for job in service.coordinated_job_list},
}))
'''


def test_the_coordination_service_gets_our_timeouts():
  # In a process of its own: the service is configured once a process.
  # tests/test_strategy.py checks that the strategy then keeps them.
  cluster = {'chief': ['127.0.0.1:1'], 'worker': ['127.0.0.1:2'] * 2,
             'evaluator': ['127.0.0.1:3']}
  result = subprocess.run(
      [sys.executable, '-c', _COORDINATION, json.dumps(cluster)], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout) == {
      'type': 'standalone', 'leader': '/job:chief/replica:0/task:0',
      'heartbeat_ms': 7000, 'join_ms': 9000,  # The first call's.
      'jobs': {'chief': 1, 'worker': 2}}


def test_without_the_coordination_protos_it_says_so(monkeypatch):
  monkeypatch.delattr(collective_all_reduce_strategy,
                      'coordination_config_pb2')
  with pytest.raises(errors.TensorFlowUnsupported) as info:
    tf_internals.configure_coordination_service(
        tf.train.ClusterSpec({'worker': ['127.0.0.1:1']}), heartbeat_s=1,
        join_s=1)
  _assert_unsupported(info, 'coordination_config_pb2')


# --- the TPU topology ---


def test_the_tpu_topology_is_the_one_initialised(monkeypatch):
  # No TPU here: TensorFlow's record is empty; then one it might hold.
  assert tpu_strategy_util.get_initialized_tpu_systems() == {}
  with pytest.raises(ValueError, match='0 TPU systems initialised'):
    tf_internals.initialized_tpu_topology()
  topology = object()
  monkeypatch.setattr(tpu_strategy_util, 'get_initialized_tpu_systems',
                      lambda: {'local': topology})
  assert tf_internals.initialized_tpu_topology() is topology


def test_without_the_tpu_record_it_says_so(monkeypatch):
  monkeypatch.delattr(tpu_strategy_util, 'get_initialized_tpu_systems')
  with pytest.raises(errors.TensorFlowUnsupported) as info:
    tf_internals.initialized_tpu_topology()
  _assert_unsupported(info, 'get_initialized_tpu_systems')
