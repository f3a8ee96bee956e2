"""The self-test's rows: each measures one property of the distributed math
on a `Machine`, through the trainer's own code (`trainable`'s train loop and
evaluators, `input_pipeline`, `models`) at small sizes, on synthetic data.

A row compares the strategy `auto` picks with one replica on the first of
the same devices (or one setting with another), fed the same global batches
from the same initial weights, with SGD at a constant rate and no dropout.
What each row proves and why its tolerance: docs/design.md#the-self-test.
`mnist_dist.tools.selftest` holds the tolerances, runs the rows and prints
the table.
"""

import dataclasses
import math
import time
import types
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from mnist_dist import config as config_lib
from mnist_dist import steps
from mnist_dist import trainable
from mnist_dist.data import input_pipeline
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.modeling import models
from mnist_dist.tools import matmul

SEED = 0
XLA_LOSS_TOLERANCE = 1e-5  # xla_step's losses, relative.
# loss_scale starts from 2^40, where float16 overflows on every replica,
# then from 2^8, where it overflows on none.
LOSS_SCALE_POWERS = (40, 8)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How much each row runs: the command's defaults; tests shrink them."""
  per_replica_batch: int = 16
  train_steps: int = 4
  speed_batch: int = 64  # conv_bn's global batch, as configs/conv_bn.py.
  speed_steps: int = 30
  matmul_size: int = matmul.MATMUL_SIZE
  matmul_seconds: float = 0.5


@dataclasses.dataclass(frozen=True)
class Machine:
  """What the rows run on: the strategy `auto` picks, and one replica."""
  strategy: tf.distribute.Strategy
  one_replica: tf.distribute.Strategy  # On the first of the same devices.
  device_kind: str  # 'CPU', 'GPU' or 'TPU'.
  precision: str  # What auto picks here, as jit_compile.
  jit_compile: bool

  @property
  def replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def describe(self) -> dict:
    return {'strategy': type(self.strategy).__name__,
            'replicas': self.replicas, 'device_kind': self.device_kind,
            'precision': self.precision, 'jit_compile': self.jit_compile}


@dataclasses.dataclass(frozen=True)
class Measured:
  """A row's figure, what it measured (detail), and whether the exact
  conditions the detail names held."""
  value: float
  detail: str
  exact: bool = True
  figures: dict = dataclasses.field(default_factory=dict)  # For the JSON.


@dataclasses.dataclass(frozen=True)
class Skipped:
  reason: str  # Shown as "skipped (REASON)".


# --- what the rows share: the trainer's own code, at small sizes ---


def _config(global_batch: int, overrides: dict):
  """The default config on synthetic data, SGD at a constant rate, no dropout
  nor XLA (docs/design.md#the-self-test: why), then {dotted key: value}."""
  config = config_lib.default_config()
  config.update_from_flattened_dict({
      'seed': SEED, 'data.source': 'synthetic', 'model.dropout': 0.0,
      'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.05,
      'optimizer.decay_rate': 1.0, 'train.jit_compile': 'off',
      'train.global_batch_size': global_batch, **overrides})
  return config


def _trainer(config, strategy) -> tuple[trainable.Learner, Callable]:
  """(learner, train loop) of config on strategy, as the trainer makes them,
  its 'auto' settings resolved for strategy's devices."""
  settings = strategy_lib.device_settings(
      config.train, device_kind=strategy_lib.device_kind(strategy),
      steps_per_epoch=1)
  keras.utils.set_random_seed(config.seed)
  learner = trainable.build_model(config, strategy=strategy,
                                  settings=settings, steps_per_epoch=1)
  return learner, trainable.make_train_loop(
      config, strategy=strategy, learner=learner, settings=settings)


def _split(config, num_steps: int) -> input_pipeline.Split:
  """Synthetic training data for num_steps global batches of config."""
  config.data.synthetic_train_examples = (
      config.train.global_batch_size * num_steps)
  return input_pipeline.load(config.data, seed=config.seed)[0]


def _train(loop, strategy, config, *, num_steps: int) -> steps.Totals:
  """loop's totals over the global batches one replica reads, split by
  tf.distribute: a row that trains does not depend on the pipeline's
  slicing, which same_global_batches checks."""
  batches = input_pipeline.train_dataset(
      tf.distribute.InputContext(), split=_split(config, num_steps),
      global_batch_size=config.train.global_batch_size, seed=config.seed)
  return loop(iter(strategy.experimental_distribute_dataset(batches)),
              tf.constant(num_steps)).numpy()


def _variables(model: keras.Model, *, path_has: str = '') -> list[np.ndarray]:
  return [np.asarray(v.numpy(), np.float64) for v in model.variables
          if tf.as_dtype(v.dtype).is_floating and path_has in v.path]


def _compare(reference, candidate, *, num_steps: int, path_has: str = ''):
  """Trains both (strategy, config) sides from the same weights on the same
  batches. (apart, loss): per variable whose path has path_has, the norm of
  the ends' difference over that of the reference's move, the largest; and
  the losses' relative difference."""
  sides = (reference, candidate)
  trainers = [_trainer(config, strategy) for strategy, config in sides]
  keras_models = [learner.model for learner, _ in trainers]
  keras_models[1].set_weights(keras_models[0].get_weights())
  start = _variables(keras_models[0], path_has=path_has)
  losses = [_train(loop, strategy, config, num_steps=num_steps).loss
            for (strategy, config), (_, loop) in zip(sides, trainers)]
  ends = [_variables(model, path_has=path_has) for model in keras_models]
  norm = np.linalg.norm
  apart = max(norm(b - a) / max(norm(a - s), 1e-30) if norm(b - a) else 0.0
              for s, a, b in zip(start, *ends, strict=True))
  return apart, abs(losses[1] / losses[0] - 1)


def replicas_text(count: int) -> str:
  return f'{count} replica{"s" * (count != 1)}'


# --- the rows ---


def same_global_batches(machine: Machine, sizes: Sizes) -> Measured:
  batch = sizes.per_replica_batch * machine.replicas
  # Augmented (it must follow the global batch too), 2.5 batches an epoch:
  # batches straddle the epoch boundaries.
  augment = _config(batch, {
      'data.augment.max_shift': 2.0, 'data.augment.max_rotation': 10.0,
      'data.augment.max_scale': 0.1, 'data.augment.elastic_alpha': 30.0,
  }).data.augment
  count, num_steps = batch * 5 // 2, 6
  images = np.zeros((count, 28, 28), np.uint8)
  images[:, 8:20, 8:20] = np.random.default_rng(SEED).integers(
      0, 256, (count, 12, 12))
  split = input_pipeline.Split(images, np.arange(count) % 10)
  seen = []
  for strategy in (machine.one_replica, machine.strategy):
    # The trainer's input: each pipeline reads its replicas' slice.
    batches = input_pipeline.distributed_iterator(
        strategy, input_pipeline.train_dataset, split=split, seed=SEED,
        global_batch_size=batch, augment_config=augment)
    seen.append([[np.concatenate([  # Each replica's share, in replica order.
        np.asarray(part) for part in strategy.experimental_local_results(
            value)]) for value in next(batches)] for _ in range(num_steps)])
  differing = sum(not all(map(np.array_equal, a, b)) for a, b in zip(*seen))
  return Measured(differing, f'{differing} of {num_steps} augmented global '
                  f'batches of {batch} (over {num_steps * batch / count:.1f}'
                  f' epochs) differ between {replicas_text(machine.replicas)}'
                  ' and 1')


def same_weights(machine: Machine, sizes: Sizes) -> Measured:
  batch = sizes.per_replica_batch * machine.replicas
  config = _config(batch, {'model.name': 'conv'})
  apart, _ = _compare((machine.one_replica, config),
                      (machine.strategy, config), num_steps=sizes.train_steps)
  return Measured(apart, f'conv, {sizes.train_steps} SGD steps of global '
                  f'batch {batch}, {replicas_text(machine.replicas)} against'
                  f' 1: weights apart by {apart:.1e} of their move (largest)')


def sync_batch_norm(machine: Machine, sizes: Sizes) -> Measured:
  batch = sizes.per_replica_batch * machine.replicas
  config = _config(batch, {'model.name': 'conv_bn',
                           'model.sync_batch_norm': True,
                           'optimizer.learning_rate': 0.001})
  # One step: its statistics and loss come from the forward pass alone, not
  # from the gradient (same_weights' property).
  statistics, loss = _compare((machine.one_replica, config),
                              (machine.strategy, config), num_steps=1,
                              path_has='moving')
  return Measured(max(statistics, loss), f'conv_bn with sync_batch_norm, a '
                  f'step of global batch {batch}, '
                  f'{replicas_text(machine.replicas)} against 1: moving '
                  f'statistics\' updates {statistics:.1e} apart (largest, '
                  f'relative), loss {loss:.1e}')


def exact_eval(machine: Machine, sizes: Sizes) -> Measured:
  batch = sizes.per_replica_batch * machine.replicas
  # 4 batches and 1 example: the last leaves all replicas but one padding.
  count = 4 * batch + 1
  images = np.zeros((count, 28, 28), np.uint8)
  images[:, 0, 0] = np.arange(count) % 256  # Pixels (0, 0) and (0, 1)
  images[:, 0, 1] = np.arange(count) // 256  # number the images.
  split = input_pipeline.Split(images,
                               (np.arange(count) * 7 % 10).astype(np.uint8))
  config = _config(batch, {'model.name': 'dense_softmax',
                           'train.eval_batch_size': batch})
  learner, _ = _trainer(config, machine.strategy)
  # Logits 4 x those two pixels as the model gets them, then 0s: exact in
  # every precision (pixel / 64 has 8 significant bits).
  layer = learner.model.get_layer('logits')
  kernel = np.zeros(layer.kernel.shape, np.float32)
  kernel[0, 0] = kernel[1, 1] = 4.0
  layer.kernel.assign(kernel)
  layer.bias.assign(np.zeros(10, np.float32))
  evaluate = trainable.make_evaluators(
      config, strategy=machine.strategy, learner=learner, replicas=(
          machine.replicas), splits={'eval': split, 'test': split})['eval']
  # No signals to watch here: the call as it is.
  totals = evaluate(types.SimpleNamespace(call=lambda fn, *args: fn(*args)))
  # The same in float64: the loss sum is a checksum of what was counted.
  logits = np.zeros((count, 10))
  logits[:, :2] = 4 * models.PIXEL_SCALE * images[:, 0, :2].astype(float)
  losses = (np.log(np.exp(logits).sum(axis=1)) -
            logits[np.arange(count), split.labels])
  correct = int(np.sum(logits.argmax(axis=1) == split.labels))
  checksum = abs(totals.loss / losses.sum() - 1)
  return Measured(
      checksum, f'{count} examples in eval batches of {batch} on '
      f'{replicas_text(machine.replicas)}: counted {totals.count:.0f}, '
      f'correct {totals.correct:.0f} of {correct}, loss checksum '
      f'{checksum:.1e} off (relative)',
      exact=totals.count == count and totals.correct == correct)


def xla_step(machine: Machine, sizes: Sizes) -> Measured | Skipped:
  if machine.device_kind == 'TPU':
    return Skipped('TPU: XLA only')
  # One replica: XLA compiles each replica's forward and backward pass alike;
  # the all-reduce and the update stay outside it.
  plain, compiled = ((machine.one_replica, _config(sizes.per_replica_batch, {
      'model.name': 'conv_bn', 'optimizer.learning_rate': 0.001,
      'train.jit_compile': jit})) for jit in ('off', 'on'))
  update, loss = _compare(plain, compiled, num_steps=sizes.train_steps)
  return Measured(
      update, f'conv_bn, {sizes.train_steps} SGD steps of batch '
      f'{sizes.per_replica_batch} on one {machine.device_kind}, with and '
      f'without XLA: updates {update:.1e} apart (largest, relative), loss '
      f'{loss:.1e} (within {XLA_LOSS_TOLERANCE:g})',
      exact=loss <= XLA_LOSS_TOLERANCE)


def loss_scale(machine: Machine, sizes: Sizes) -> Measured | Skipped:
  if machine.device_kind == 'TPU':
    return Skipped('TPU: no float16')
  batch = sizes.per_replica_batch * machine.replicas
  num_steps = sizes.train_steps
  config = _config(batch, {'model.name': 'dense',
                           'train.precision': 'mixed_float16'})
  learner, loop = _trainer(config, machine.strategy)
  optimizer, phases = learner.optimizer, []
  for power in LOSS_SCALE_POWERS:
    optimizer.dynamic_scale.assign(2.0**power)
    optimizer.step_counter.assign(0)
    _train(loop, machine.strategy, config, num_steps=num_steps)
    scales, counters = ([float(np.asarray(copy)) for copy in
                         machine.strategy.experimental_local_results(v.value)]
                        for v in (optimizer.dynamic_scale,
                                  optimizer.step_counter))
    phases.append([(math.log2(scale), counter)  # Each replica's.
                   for scale, counter in zip(scales, counters)])
  differing = sum(copy != copies[0] for copies in phases for copy in copies)
  finite = all(np.isfinite(v).all() for v in _variables(learner.model))
  told = [', '.join(f'2^{power:g} (counter {counter:.0f})'
                    for power, counter in copies) for copies in phases]
  return Measured(
      differing, f'dense in mixed_float16, global batch {batch}, on each '
      f'replica: {num_steps} steps from a loss scale of '
      f'2^{LOSS_SCALE_POWERS[0]} (all overflow, all skipped): {told[0]}; '
      f'{num_steps} from 2^{LOSS_SCALE_POWERS[1]} (none overflows): '
      f'{told[1]}; {differing} copies differ from the first replica\'s; '
      f'weights {"finite" if finite else "NOT finite"}',
      exact=finite and [phases[0][0], phases[1][0]] == [
          (LOSS_SCALE_POWERS[0] - num_steps, 0),
          (LOSS_SCALE_POWERS[1], num_steps)])


def accumulation(machine: Machine, sizes: Sizes) -> Measured:
  batch = sizes.per_replica_batch * machine.replicas
  whole, accumulated = ((machine.strategy, _config(batch, {
      'model.name': 'conv', 'train.accumulation_steps': micro_batches}))
                        for micro_batches in (1, 2))
  apart, _ = _compare(whole, accumulated, num_steps=sizes.train_steps)
  return Measured(apart, f'conv, {sizes.train_steps} SGD steps of global '
                  f'batch {batch} on {replicas_text(machine.replicas)}, as 2'
                  ' micro-batches a replica and whole: weights apart by '
                  f'{apart:.1e} of their move (largest)')


def speed(machine: Machine, sizes: Sizes) -> Measured:
  config = config_lib.default_config()  # conv_bn: Adam, dropout 0.3.
  config.data.source = 'synthetic'
  batch = config.train.global_batch_size = trainable.round_to_replicas(
      sizes.speed_batch, replicas=machine.replicas)
  _, loop = _trainer(config, machine.strategy)  # As auto picks here.
  batches = input_pipeline.distributed_iterator(
      machine.strategy, input_pipeline.train_dataset, seed=config.seed,
      split=_split(config, sizes.speed_steps), global_batch_size=batch)
  loop(batches, tf.constant(sizes.speed_steps)).numpy()  # Traces, warms up.
  start = time.perf_counter()
  totals = loop(batches, tf.constant(sizes.speed_steps)).numpy()
  examples_per_s = totals.count / (time.perf_counter() - start)
  dtype = 'bfloat16' if machine.precision == 'mixed_bfloat16' else 'float32'
  device = tf.DeviceSpec.from_string(
      machine.strategy.extended.worker_devices[0])
  with tf.device(device):
    gflops = matmul.matmul_gflops(dtype, size=sizes.matmul_size, tries=2,
                                  seconds=sizes.matmul_seconds)
  return Measured(
      examples_per_s, f'conv_bn (Adam, dropout 0.3) {examples_per_s:,.0f} '
      f'examples/s, global batch {batch}, {sizes.speed_steps} steps on '
      f'{replicas_text(machine.replicas)}, {machine.precision}, XLA '
      f'{"on" if machine.jit_compile else "off"}; {dtype} matmul '
      f'{sizes.matmul_size}x{sizes.matmul_size} {gflops:,.0f} GFLOP/s on '
      f'{device.device_type}:{device.device_index}',
      exact=math.isfinite(gflops) and gflops > 0,
      figures={'examples_per_s': round(examples_per_s, 1),
               'matmul_gflops': round(gflops, 1), 'matmul_dtype': dtype})
