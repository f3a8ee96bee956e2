"""Picks the tf.distribute strategy a run trains under.

Call `create_strategy` before anything else touches TensorFlow's devices:
splitting the CPU into logical devices (distribution.cpu_devices) is only
possible before TensorFlow initialises them.
"""

import dataclasses
import functools
import glob
import os

from absl import logging
import tensorflow as tf

from mnist_dist.base import tf_internals
from mnist_dist.base.errors import ConfigError
from mnist_dist.distribution import environment
from mnist_dist.distribution import hardware


def _tpu_host() -> bool:
  """True on a TPU VM (its chips are /dev/accel* or vfio) or with TPU_NAME."""
  return bool(glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*')
              or os.environ.get('TPU_NAME'))


def _tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, tf.errors.OpError) as e:
    message = str(e).strip().splitlines()[0]
    raise ConfigError(
        f'distribution.strategy=tpu: no TPU reachable at '
        f'distribution.tpu={tpu!r} ({message}). On a TPU VM use tpu=local; '
        'elsewhere give the TPU name or grpc://host:port, or pick another '
        'strategy') from e
  return tf.distribute.TPUStrategy(resolver)


def _logical_cpus(count: int) -> list[str]:
  """Splits the CPU into `count` logical devices (or reuses an earlier
  split)."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError:  # Already initialised: usable if the split is enough.
    pass
  devices = [d.name for d in tf.config.list_logical_devices('CPU')]
  if len(devices) < count:
    raise ConfigError(
        f'distribution.cpu_devices={count}, but TensorFlow was initialised '
        f'with {len(devices)} CPU devices before the strategy was created')
  return devices[:count]


def heartbeat_timeout_s(distribution_config, *, gpu: bool) -> float:
  """distribution.heartbeat_timeout_s, its 0 (auto) made concrete."""
  return distribution_config.heartbeat_timeout_s or (10.0 if gpu else 30.0)


def _multi_worker_strategy(
    *, heartbeat_s: float,
    join_s: float) -> tf.distribute.MultiWorkerMirroredStrategy:
  """MultiWorkerMirroredStrategy of the TF_CONFIG cluster, its coordination
  service set up as the strategy would, but with our timeouts: heartbeat_s
  (a worker silent this long is gone) and join_s (all must have joined).
  """
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  # The strategy has no arguments for them: configured first, it keeps them.
  tf_internals.configure_coordination_service(
      resolver.cluster_spec(), heartbeat_s=heartbeat_s, join_s=join_s)
  return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


# distribution.strategy -> (devices, tpu, gpu, timeouts) -> the strategy.
# With 'auto' (create_strategy picks one of these), config.STRATEGIES
# (tests/test_configs.py).
FACTORIES = {
    'one_device': lambda devices, tpu, gpu, timeouts: (
        tf.distribute.OneDeviceStrategy('/gpu:0' if gpu else '/cpu:0')),
    'mirrored': lambda devices, tpu, gpu, timeouts: (
        tf.distribute.MirroredStrategy(devices and list(devices))),
    # Cluster membership comes from TF_CONFIG, as TensorFlow defines it.
    'multi_worker_mirrored': lambda devices, tpu, gpu, timeouts: (
        _multi_worker_strategy(**timeouts)),
    'tpu': lambda devices, tpu, gpu, timeouts: _tpu_strategy(tpu),
}
NAMES = ('auto', *FACTORIES)


@functools.cache
def _make_strategy(name: str, *, devices: tuple[str, ...] | None, tpu: str,
                   gpu: bool, timeouts: tuple[tuple[str, float], ...]
                   ) -> tf.distribute.Strategy:
  """One strategy per process and setting, as TensorFlow expects.

  The controller creates its strategy once and passes it down; this memo is
  for a process that runs several trainings (the notebook trains five
  configs in one): a second MirroredStrategy in the same process reuses
  collective keys of the first and fails with "Shape mismatch in the
  collective instance" (a known TF issue), and a TPU system and a
  multi-worker cluster are set up only once.
  """
  strategy = FACTORIES[name](devices, tpu, gpu, dict(timeouts))
  logging.info('Strategy: %s with %d replicas', type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def strategy_name(distribution_config) -> str:
  """distribution.strategy, its 'auto' made concrete here: TPU on a TPU
  host; MultiWorkerMirrored where the environment describes a cluster of
  several workers (TF_CONFIG, a Slurm step, a JobSet's pod:
  `environment.tf_config`); Mirrored over all GPUs when there are several,
  or over logical CPUs when cpu_devices is set; else OneDevice."""
  if distribution_config.strategy != 'auto':
    return distribution_config.strategy
  if _tpu_host():
    return 'tpu'
  if environment.cluster_size(environment.tf_config()) > 1:
    return 'multi_worker_mirrored'
  if (len(tf.config.list_physical_devices('GPU')) > 1 or
      distribution_config.cpu_devices):
    return 'mirrored'
  return 'one_device'


def create_strategy(distribution_config) -> tf.distribute.Strategy:
  """Returns the strategy `strategy_name` picks for config.distribution."""
  name = strategy_name(distribution_config)
  cpu_devices = distribution_config.cpu_devices
  gpus = tf.config.list_physical_devices('GPU')
  devices = tuple(_logical_cpus(cpu_devices)) if (
      name == 'mirrored' and cpu_devices) else None
  return _make_strategy(
      name, devices=devices, tpu=distribution_config.tpu, gpu=bool(gpus),
      timeouts=(('heartbeat_s', heartbeat_timeout_s(distribution_config,
                                                    gpu=bool(gpus))),
                ('join_s', distribution_config.join_timeout_s)))


def device_kind(strategy: tf.distribute.Strategy) -> str:
  """'TPU', 'GPU' or 'CPU': the kind of device the replicas run on."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return 'TPU'
  device = strategy.extended.worker_devices[0]
  return tf.DeviceSpec.from_string(device).device_type or 'CPU'


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
  """The config's 'auto' settings, made concrete for one kind of device."""
  precision: str
  jit_compile: bool
  steps_per_loop: int


def device_settings(train_config, *, device_kind: str,
                    steps_per_epoch: int) -> DeviceSettings:
  """Resolves train.precision, train.jit_compile and train.steps_per_loop."""
  precision = train_config.precision
  if precision == 'auto':
    # TPUs compute in bfloat16 natively; elsewhere the codelab's float32.
    precision = 'mixed_bfloat16' if device_kind == 'TPU' else 'float32'
  elif precision == 'mixed_bfloat16_if_native':
    precision = ('mixed_bfloat16' if hardware.native_bfloat16(device_kind)
                 else 'float32')
  if train_config.jit_compile == 'auto':
    # Measured here: XLA made the conv_bn step on CPU ~3x slower.
    jit_compile = device_kind == 'GPU'
  else:
    # TPUs compile the whole loop with XLA whatever this says.
    jit_compile = train_config.jit_compile == 'on' and device_kind != 'TPU'
  steps_per_loop = train_config.steps_per_loop or (
      steps_per_epoch if device_kind == 'TPU' else min(100, steps_per_epoch))
  return DeviceSettings(precision=precision, jit_compile=jit_compile,
                        steps_per_loop=steps_per_loop)
