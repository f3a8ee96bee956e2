"""Every private or internal TensorFlow name the package uses, and only here.

Each one does something no public API does (its comment says what and why
not). Each was checked on the TensorFlow versions CI runs, `CHECKED_ON`:
their sources read, and tests/test_tf_internals.py run on each, which fails
if TensorFlow stops honouring one (the TPU topology's recording was read,
not run: there is no TPU in CI). A newer TensorFlow may move or change any
of them, so each is looked up where it is used, not when the package is
imported, and one that is missing or changed raises
`errors.TensorFlowUnsupported`: one line naming the TensorFlow version and
what is gone, instead of a traceback from deep inside TensorFlow or a silent
change of behaviour.
"""

import contextlib
import threading
from typing import MutableMapping

from absl import logging
import tensorflow as tf

from mnist_dist.base import errors

CHECKED_ON = '2.17.1, 2.19.1 and 2.21.0'


def _unsupported(what: str) -> errors.TensorFlowUnsupported:
  return errors.TensorFlowUnsupported(what, version=tf.__version__,
                                      checked_on=CHECKED_ON)


# tf.distribute puts each input pipeline's batches on its devices through
# datasets it builds itself, one a device, in
# `multi_device_iterator_ops._create_device_dataset`. Their options are their
# own: `with_options` on the pipeline's dataset does not reach them, and
# tf.distribute.InputOptions has no field for them (its
# experimental_per_replica_buffer_size=0 leaves out their prefetch, and with
# it their autotuner, but also the prefetch to the device). So the one way to
# set their options is to wrap that function while the iterator is made.
_device_datasets_lock = threading.Lock()


@contextlib.contextmanager
def device_datasets_with(options: tf.data.Options):
  """Within, the per-device datasets this thread's distributed iterators
  make get `options`.

  The wrap is process-wide, so the context holds a lock (one such context
  at a time) and the wrap passes other threads' datasets through untouched.
  Raises TensorFlowUnsupported if the function is gone; warns if the
  iterators made within did not call it (TensorFlow built them another way).
  """
  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  # pylint: disable=protected-access
  try:
    from tensorflow.python.data.ops import multi_device_iterator_ops
  except ImportError as e:
    raise _unsupported('tensorflow.python.data.ops.multi_device_iterator_ops'
                       ) from e
  what = 'multi_device_iterator_ops._create_device_dataset'
  owner = threading.get_ident()
  made = 0

  with _device_datasets_lock:
    try:
      create = multi_device_iterator_ops._create_device_dataset
    except AttributeError as e:
      raise _unsupported(what) from e

    def create_with_options(*args, **kwargs):
      nonlocal made
      dataset = create(*args, **kwargs)
      if threading.get_ident() != owner:
        return dataset
      if not isinstance(dataset, tf.data.Dataset):
        raise _unsupported(f'{what} returning a tf.data.Dataset')
      made += 1
      return dataset.with_options(options)

    multi_device_iterator_ops._create_device_dataset = create_with_options
    try:
      yield
    finally:
      multi_device_iterator_ops._create_device_dataset = create
  if not made:
    # Not an error to stop a run for: the datasets were made, only without
    # these options (a TPU's input may take another way, unchecked here).
    logging.warning('%s', _unsupported(
        f'{what} called to make the per-device datasets (they keep '
        "tf.data's default options)"))


def saved_in_place(checkpoint: tf.train.Checkpoint
                   ) -> MutableMapping[object, object]:
  """{trackable: stand-in}, empty, whose stand-ins checkpoint's saves write in
  place of the trackables: under their names, with their values.

  The mechanism of TensorFlow's own asynchronous checkpoint
  (checkpoint/async_checkpoint_helper.py), which checkpoints.py cannot use
  with Keras 3 variables
  (docs/design.md#checkpoints-that-do-not-stall-training): the saver's
  `_object_map`, which TensorFlow keeps for this, and an identity-keyed
  dictionary (variables are not hashable) as the map.
  """
  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  # pylint: disable=protected-access
  try:
    from tensorflow.python.util import object_identity
  except ImportError as e:
    raise _unsupported('tensorflow.python.util.object_identity') from e
  saver = getattr(checkpoint, '_saver', None)
  if not hasattr(saver, '_object_map'):
    raise _unsupported('tf.train.Checkpoint._saver._object_map')
  saver._object_map = object_identity.ObjectIdentityDictionary()
  return saver._object_map


# The methods by which a trackable's class serializes tensors of its own
# (a variable's value, a lookup table's contents); the base class's do
# nothing. TensorFlow offers no public way to ask whether an object has any.
_SERIALIZING_METHODS = ('_serialize_to_tensors',
                        '_gather_saveables_for_checkpoint')


def saves_own_tensors(trackable) -> bool:
  """Whether a checkpoint holds tensors of trackable itself (not only of its
  children): its class overrides a method by which trackables serialize."""
  try:
    base = tf.__internal__.tracking.Trackable
    defaults = [getattr(base, method) for method in _SERIALIZING_METHODS]
  except AttributeError as e:
    raise _unsupported(
        'tf.__internal__.tracking.Trackable._serialize_to_tensors and '
        '_gather_saveables_for_checkpoint') from e
  return any(getattr(type(trackable), method, default) is not default
             for method, default in zip(_SERIALIZING_METHODS, defaults))


def configure_coordination_service(cluster_spec: tf.train.ClusterSpec, *,
                                   heartbeat_s: float, join_s: float) -> None:
  """Sets up the coordination service of cluster_spec's multi-worker
  cluster as MultiWorkerMirroredStrategy would, but with these timeouts:
  heartbeat_s (a worker silent this long is gone) and join_s (all must have
  joined by then). Call it before creating the strategy.

  The strategy has no arguments for them; it configures the service itself
  (collective_all_reduce_strategy.py) only if nothing did before, through
  the eager context's `configure_coordination_service`, with the leader that
  `multi_worker_util.coordination_leader` picks and the `CoordinatedJob`
  protos of the module it imports (whose path moved between versions). This
  does the same, first. A no-op without a cluster or once configured.
  """
  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  try:
    from tensorflow.python.distribute import collective_all_reduce_strategy
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context
    jobs = collective_all_reduce_strategy.coordination_config_pb2
    leader = multi_worker_util.coordination_leader
    configured = context.context().coordination_service
    configure = context.context().configure_coordination_service
  except (ImportError, AttributeError) as e:
    raise _unsupported(f'the coordination service set-up ({e})') from e
  if not cluster_spec.jobs or configured is not None:
    return
  try:
    configure(
        service_type='standalone',
        service_leader=leader(cluster_spec),
        heartbeat_timeout_in_ms=int(heartbeat_s * 1000),
        cluster_register_timeout_in_ms=int(join_s * 1000),
        coordinated_jobs=[
            jobs.CoordinatedJob(name=job,
                                num_tasks=cluster_spec.num_tasks(job))
            for job in ('chief', 'worker') if job in cluster_spec.jobs])
  except TypeError as e:  # An argument renamed or gone.
    raise _unsupported(f'the coordination service set-up ({e})') from e


def initialized_tpu_topology() -> tf.tpu.experimental.Topology:
  """The topology of the TPU system this process initialised.

  `tf.tpu.experimental.initialize_tpu_system` returns it only once, and
  nothing public gives it back; TensorFlow records it, privately, in
  `tpu_strategy_util`, which `get_initialized_tpu_systems` reads. Raises
  ValueError unless exactly one TPU system was initialised.
  """
  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  try:
    from tensorflow.python.tpu import tpu_strategy_util
    systems = tpu_strategy_util.get_initialized_tpu_systems()
  except (ImportError, AttributeError) as e:
    raise _unsupported('tpu_strategy_util.get_initialized_tpu_systems') from e
  if len(systems) != 1:
    raise ValueError(f'{len(systems)} TPU systems initialised, not one')
  (topology,) = systems.values()
  return topology
