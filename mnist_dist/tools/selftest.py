r"""mnist-dist-selftest: the distributed math, checked on this machine first.

  mnist-dist-selftest                       # all GPUs, or the TPU's cores
  mnist-dist-selftest --cpu_devices=2 --out=/tmp/selftest.json
  python -m mnist_dist.selftest --cpu_devices=2

Runs on the devices of the machine it is started on, under the strategy,
precision and XLA setting that `auto` picks there (Mirrored over all GPUs,
TPUStrategy over the TPU's cores, or Mirrored over `--cpu_devices` logical
CPUs), with synthetic data: nothing is downloaded. Each row trains or
evaluates with the project's own code (`steps`, `input_pipeline`,
`models`, `trainable.build_model`, `strategy`), so that a bug there fails it.
The reference is a one-replica strategy on the first of the same devices,
fed the same global batches from the same initial weights. Every comparison
uses SGD at a constant learning rate and no dropout: Adam divides each
update by the gradient's own size, so it would hide a gradient scaled by
the wrong batch; dropout draws other masks when the batch is split.
Tolerances are by the precision auto picks: float32 on CPUs and GPUs,
mixed_bfloat16 on TPUs.

The rows, what each proves and why its tolerance (figures measured on a
2-core CPU split into 2 logical devices, float32):

- same_global_batches: every topology sees the same global batches. The
  trainer's distributed input (`input_pipeline.distributed_iterator`: each
  pipeline reads its replicas' slice) is put back together in replica order
  and compared with the one-replica input, image for image, over batches
  that straddle epoch boundaries, with augmentation on (it must follow the
  global batch too). Exact: 0 batches may differ. The training rows below
  are fed the one-replica pipeline's batches, split by tf.distribute, so
  that each row fails for its own property only.
- same_weights: the gradient is that of the global batch's mean, whatever
  the replica count. A `conv` net, 4 SGD steps on all replicas and on one;
  the figure is, per variable, the norm of the weights' difference over the
  norm of their move, the largest. A loss divided by the replica's batch
  instead of the global one reads ~1 (twice the move on 2 replicas).
  float32: 1e-4, what tests/test_train.py allows for 1 vs 2 replicas
  (measured 4e-6: one float32 rounding of the weights, the gradient's sums
  being added in another order). bfloat16: 0.3, test_xla.py's tolerance for
  steps that round differently (measured 0.04-0.09 here: each replica's
  gradient is rounded to bfloat16 before the all-reduce adds them).
- sync_batch_norm: with `model.sync_batch_norm=True`, batch norm normalises
  with the global batch's statistics. conv_bn, one training step on all
  replicas and on one (one step: its statistics and loss come from the
  forward pass alone, not from the gradient); the figure is the largest
  relative difference of the loss and of each moving statistic's update
  (norms). Per-replica statistics read ~0.3 (the dense layer's variance
  over 16 examples a replica), synchronised ones 4e-6 (float32), 2e-3
  (bfloat16): tolerances 1e-3 and 5e-2.
- exact_eval: evaluation counts every example exactly once, by content. A
  split of 4 eval batches and 1 example (the eval batch does not divide it,
  and its last batch leaves every replica but the first padding only) goes
  through the real eval pipeline and loop, with a `dense_softmax` model
  whose logits are set to a known function of two pixels that number each
  image: its loss sum is a checksum of which examples were weighed in, and
  must equal the one computed here in float64. Each example's loss is 0.16
  or more, ~2.7 on average, so a missing or doubled one moves the sum of N
  by over 1e-5 of itself while N < 5,000 (N = 64 a replica + 1 here). The
  logits are exact in every precision (pixel / 64 has 8 significant bits),
  so the tolerance is float32 summation's, 1e-5 (measured 5e-8); the count
  and the correct predictions must be exact.
- xla_step: the XLA-compiled step (`jit_compile=True`, what GPUs use)
  agrees with the plain one: conv_bn, 4 SGD steps each from the same
  weights, on one replica (XLA compiles each replica's forward and backward
  pass alike; the all-reduce and the update stay outside it). The figure is,
  per variable, the norm of the difference of the two updates over the norm
  of the update, the largest, with the losses within 1e-5 (relative).
  float32: 2e-2 (measured 3e-3), the tolerance of tests/test_xla.py and for
  its reason: XLA on CPU sums a conv's batch-norm moments in another order,
  and Keras computes the variance as E[x^2] - E[x]^2, which magnifies it.
  Skipped on a TPU, which runs XLA only (so this row is float32 only).
- loss_scale: with mixed_float16 (the GPU option; auto never picks it),
  the dynamic loss scale and its counter are the same on every replica.
  A dense net, 4 steps from a scale of 2^40, where float16 overflows on
  every replica (each step skipped, the scale halved), then 4 from 2^8,
  where none does (each step counted); each replica's copy is read back.
  Exact, and the weights must stay finite. (Near the overflow point, where
  one replica's gradients can overflow while another's do not, the train
  step makes all replicas skip together: tests/test_steps.py and
  docs/design.md#the-self-test.) Skipped on a TPU (no float16 there).
- accumulation: `train.accumulation_steps=2` gives the update of the whole
  global batch. The `conv` net of same_weights, 4 SGD steps on all replicas
  with 2 micro-batches each and without; the figure and the tolerances are
  same_weights' (measured 2e-6: float32 rounding, the micro-batches'
  gradients being added in another order). A micro-batch loss divided by
  its own size instead of the global batch's reads ~1. Runs on one replica
  too.
- speed: conv_bn's training examples/s with its config (Adam, dropout 0.3,
  global batch 64 rounded up to a multiple of the replicas) under what auto
  picks, after a warm-up loop, and the device's matmul rate in the run's
  dtype (`mnist_dist/tools/matmul.py`). Informational: it passes when measured.

A row that needs more than one replica reports "skipped (1 replica)" on a
machine with one device: its comparison would be one replica against
itself. A skipped row is not a failure (exit 0), but the table says so on
its own line and the summary counts it; `--cpu_devices=2` runs every row on
a CPU. A row whose code raises fails, naming the error.

Writes the table as JSON to --out (the launchers: WORKDIR/selftest.json)
and prints it. Exit codes: 0 every row passed or was skipped; 1 a row
failed; 2 bad flags or a machine it cannot run on (one `error:` line).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

from mnist_dist.base import console

console.import_tensorflow(sys.argv)  # Before anything else imports it.

# pylint: disable=wrong-import-position
from absl import flags
from absl import logging
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from mnist_dist.base import cli
from mnist_dist import config as config_lib
from mnist_dist.base import errors
from mnist_dist.data import input_pipeline
from mnist_dist.tools import matmul
from mnist_dist.base import paths
from mnist_dist import steps
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist import trainable
from mnist_dist.base import workdir as workdir_lib
# pylint: enable=wrong-import-position

SEED = 0

# {precision: tolerance} of each comparison; the module docstring says why.
WEIGHTS_TOLERANCE = {'float32': 1e-4, 'mixed_bfloat16': 0.3}
SYNC_BN_TOLERANCE = {'float32': 1e-3, 'mixed_bfloat16': 5e-2}
# The XLA row runs in float32 only: where auto picks bfloat16 (a TPU), there
# is no step without XLA to compare with.
XLA_UPDATE_TOLERANCE = 2e-2
XLA_LOSS_TOLERANCE = 1e-5
EVAL_CHECKSUM_TOLERANCE = 1e-5
OVERFLOWING_LOSS_SCALE = 2.0**40
SAFE_LOSS_SCALE = 2.0**8
# The data's dtype for the matmul rate of each precision.
MATMUL_DTYPE = {'float32': 'float32', 'mixed_bfloat16': 'bfloat16'}


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
  precision: str  # What auto picks here.
  jit_compile: bool  # What auto picks here.

  @property
  def replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def describe(self) -> dict:
    return {'strategy': type(self.strategy).__name__,
            'replicas': self.replicas, 'device_kind': self.device_kind,
            'precision': self.precision, 'jit_compile': self.jit_compile}


@dataclasses.dataclass(frozen=True)
class Measured:
  """What a row measured. It passes when `value` is within `tolerance` (or,
  with tolerance None, informational, when it is a positive number) and
  the exact conditions its detail names held (`exact`)."""
  value: float
  tolerance: float | None
  detail: str
  exact: bool = True
  figures: dict = dataclasses.field(default_factory=dict)  # For the JSON.

  @property
  def passed(self) -> bool:
    if not (self.exact and math.isfinite(self.value)):
      return False
    return self.value > 0 if self.tolerance is None else (
        self.value <= self.tolerance)


@dataclasses.dataclass(frozen=True)
class Skipped:
  reason: str  # Shown as "skipped (REASON)".


@dataclasses.dataclass(frozen=True)
class Check:
  """One row: a property of the README and the function that measures it."""
  name: str
  claim: str
  measure: Callable[['Machine', Sizes], Measured | Skipped]
  multi_replica: bool = False  # Needs 2+ replicas: skipped on one.


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of the table, as printed and written to JSON."""
  name: str
  claim: str
  status: str  # 'pass', 'fail' or 'skipped (why)'.
  measured: float | None
  tolerance: float | None  # None: informational (or skipped).
  detail: str
  figures: dict = dataclasses.field(default_factory=dict)

  @property
  def failed(self) -> bool:
    return self.status == 'fail'

  @property
  def skipped(self) -> bool:
    return self.status.startswith('skipped')


# --- building blocks: the project's own code, at small sizes ---


def _config(overrides: dict) -> ml_collections.ConfigDict:
  """The default config on synthetic data, SGD at a constant rate, no
  dropout, with {dotted key: value} overrides."""
  config = config_lib.default_config()
  config.seed = SEED
  config.data.source = 'synthetic'
  config.model.dropout = 0.0
  config.optimizer.name = 'sgd'
  config.optimizer.decay_rate = 1.0
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def _build(config, strategy, *, precision: str) -> trainable.Learner:
  """The model and optimizer of config, built in strategy's scope."""
  keras.utils.set_random_seed(config.seed)
  return trainable.build_model(
      config, strategy=strategy, steps_per_epoch=1,
      settings=strategy_lib.DeviceSettings(
          precision=precision, jit_compile=False, steps_per_loop=1))


def _build_pair(config, first, second, *, precision: str):
  """Models of config under strategies first and second, with the same
  initial weights."""
  original = _build(config, first, precision=precision)
  copy = _build(config, second, precision=precision)
  copy.model.set_weights(original.model.get_weights())
  return original, copy


def _split(config, num_examples: int) -> input_pipeline.Split:
  config.data.synthetic_train_examples = num_examples
  train_split, _ = input_pipeline.load(config.data, seed=config.seed)
  return train_split


def _distributed_input(strategy, split, *, global_batch: int, seed: int,
                       augment_config=None):
  """The trainer's input: one pipeline per worker, each reading only its
  replicas' slice of every global batch."""
  return input_pipeline.distributed_iterator(
      strategy, input_pipeline.train_dataset, split=split,
      global_batch_size=global_batch, seed=seed,
      augment_config=augment_config)


def _same_batches(strategy, split, *, global_batch: int, num_steps: int):
  """The same global batches under any strategy: the pipeline's first
  num_steps as one replica reads them, split by tf.distribute in replica
  order. Rows fed by it do not depend on the pipeline's slicing, which
  same_global_batches checks."""
  batches = input_pipeline.train_dataset(
      tf.distribute.InputContext(), split=split,
      global_batch_size=global_batch, seed=SEED).take(num_steps)
  return iter(strategy.experimental_distribute_dataset(batches))


def _loop(learner: trainable.Learner, strategy, *, config, global_batch: int,
          jit_compile: bool = False):
  """The real training loop of trained's model under strategy."""
  return steps.make_train_loop(
      strategy=strategy, train_step=steps.make_train_step(
          model=learner.model, optimizer=learner.optimizer,
          global_batch_size=global_batch, jit_compile=jit_compile,
          label_smoothing=config.train.label_smoothing,
          weight_average=learner.average,
          accumulation_steps=config.train.accumulation_steps),
      stop_on_nonfinite=False)


def _train(learner: trainable.Learner, strategy, split, *, config,
           global_batch: int, num_steps: int,
           jit_compile: bool = False) -> steps.Totals:
  """Totals of num_steps steps of the real training loop on _same_batches."""
  loop = _loop(learner, strategy, config=config, global_batch=global_batch,
               jit_compile=jit_compile)
  iterator = _same_batches(strategy, split, global_batch=global_batch,
                           num_steps=num_steps)
  return loop(iterator, tf.constant(num_steps)).numpy()


def _variables(model: keras.Model) -> list[np.ndarray]:
  """The model's float variables (weights and batch-norm statistics)."""
  return [np.asarray(v.numpy(), np.float64) for v in model.variables
          if tf.as_dtype(v.dtype).is_floating]


def _max_ratio(numerators, denominators, *, norm) -> float:
  """max over variables of norm(numerator) / norm(denominator) (0 / 0 = 0)."""
  ratios = [norm(n) / max(norm(d), 1e-30) if norm(n) else 0.0
            for n, d in zip(numerators, denominators, strict=True)]
  return max(ratios)


def _replicas(count: int) -> str:
  return f'{count} replica{"s" * (count != 1)}'


def _relative(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


# --- the rows ---


def _indexed_images(num_examples: int) -> np.ndarray:
  """uint8 images whose pixels (0, 0) and (0, 1) number them: i % 256 and
  i // 256, the rest blank."""
  images = np.zeros((num_examples, 28, 28), np.uint8)
  images[:, 0, 0] = np.arange(num_examples) % 256
  images[:, 0, 1] = np.arange(num_examples) // 256
  return images


_AUGMENT = ml_collections.ConfigDict(
    {'max_shift': 2.0, 'max_rotation': 10.0, 'max_scale': 0.1,
     'elastic_alpha': 30.0, 'elastic_sigma': 4.0})


def _global_batches(strategy, split, *, global_batch: int,
                    num_steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """The first num_steps (images, labels) global batches strategy's input
  gives, each replica's share put back in replica order."""
  iterator = _distributed_input(strategy, split, global_batch=global_batch,
                                seed=SEED, augment_config=_AUGMENT)
  batches = []
  for _ in range(num_steps):
    images, labels = next(iterator)
    batches.append(tuple(
        np.concatenate([np.asarray(part) for part in
                        strategy.experimental_local_results(value)])
        for value in (images, labels)))
  return batches


def same_global_batches(machine: Machine, sizes: Sizes) -> Measured:
  global_batch = sizes.per_replica_batch * machine.replicas
  # 2.5 batches an epoch: batches straddle the epoch boundaries.
  num_examples = global_batch * 5 // 2
  rng = np.random.default_rng(SEED)
  images = np.zeros((num_examples, 28, 28), np.uint8)
  images[:, 8:20, 8:20] = rng.integers(0, 256, (num_examples, 12, 12))
  split = input_pipeline.Split(images, np.arange(num_examples) % 10)
  num_steps = 6
  kwargs = dict(split=split, global_batch=global_batch, num_steps=num_steps)
  reference = _global_batches(machine.one_replica, **kwargs)
  distributed = _global_batches(machine.strategy, **kwargs)
  differing = sum(
      not (np.array_equal(ref_images, got_images) and
           np.array_equal(ref_labels, got_labels))
      for (ref_images, ref_labels), (got_images, got_labels) in zip(
          reference, distributed, strict=True))
  return Measured(
      differing, 0,
      f'{differing} of {num_steps} augmented global batches of {global_batch}'
      f' (over {num_steps * global_batch / num_examples:.1f} epochs) differ '
      f'between {_replicas(machine.replicas)} and 1')


def _weights_apart(machine: Machine, sizes: Sizes, *, reference, candidate,
                   compared: str) -> Measured:
  """How far apart, relative to their move, the weights of a `conv` net end
  after sizes.train_steps SGD steps from the same start and batches under
  reference and candidate, each (strategy, config). compared: what the two
  are, for the row's line ({batch}: the global batch).
  """
  global_batch = sizes.per_replica_batch * machine.replicas
  split = _split(reference[1], global_batch * sizes.train_steps)
  pair = _build_pair(reference[1], reference[0], candidate[0],
                     precision=machine.precision)
  start = _variables(pair[0].model)
  for learner, (strategy, config) in zip(pair, (reference, candidate)):
    _train(learner, strategy, split, config=config, global_batch=global_batch,
           num_steps=sizes.train_steps)
  reached, other = (_variables(learner.model) for learner in pair)
  value = _max_ratio([b - a for a, b in zip(reached, other)],
                     [a - b for a, b in zip(reached, start)],
                     norm=np.linalg.norm)
  return Measured(
      value, WEIGHTS_TOLERANCE[machine.precision],
      f'conv, {sizes.train_steps} SGD steps of global batch {global_batch}'
      f'{compared.format(batch=global_batch)}: weights apart by {value:.1e} '
      'of their move (largest, relative)')


def same_weights(machine: Machine, sizes: Sizes) -> Measured:
  config = _config({'model.name': 'conv', 'optimizer.learning_rate': 0.05})
  return _weights_apart(
      machine, sizes, reference=(machine.one_replica, config),
      candidate=(machine.strategy, config),
      compared=f', {_replicas(machine.replicas)} against 1')


def accumulation(machine: Machine, sizes: Sizes) -> Measured:
  config = _config({'model.name': 'conv', 'optimizer.learning_rate': 0.05})
  accumulated = _config({'model.name': 'conv', 'optimizer.learning_rate': 0.05,
                         'train.accumulation_steps': 2})
  return _weights_apart(
      machine, sizes, reference=(machine.strategy, config),
      candidate=(machine.strategy, accumulated),
      compared=f' on {_replicas(machine.replicas)}, as 2 micro-batches a '
      'replica and whole')


def _moving_statistics(model: keras.Model) -> list[np.ndarray]:
  return [np.asarray(v.numpy(), np.float64) for v in model.variables
          if 'moving' in v.path]


def sync_batch_norm(machine: Machine, sizes: Sizes) -> Measured:
  config = _config({'model.name': 'conv_bn', 'model.sync_batch_norm': True,
                    'optimizer.learning_rate': 0.001})
  global_batch = sizes.per_replica_batch * machine.replicas
  split = _split(config, global_batch)
  one, every = _build_pair(config, machine.one_replica, machine.strategy,
                           precision=machine.precision)
  start = _moving_statistics(one.model)
  # One step: its statistics and loss come from the forward pass alone, so
  # that this row does not depend on the gradient (same_weights' row).
  kwargs = dict(split=split, config=config, global_batch=global_batch,
                num_steps=1)
  one_totals = _train(one, machine.one_replica, **kwargs)
  every_totals = _train(every, machine.strategy, **kwargs)
  one_stats = _moving_statistics(one.model)
  every_stats = _moving_statistics(every.model)
  statistics = _max_ratio([a - b for a, b in zip(every_stats, one_stats)],
                          [a - b for a, b in zip(one_stats, start)],
                          norm=np.linalg.norm)
  loss = _relative(every_totals.loss, one_totals.loss)
  return Measured(
      max(statistics, loss), SYNC_BN_TOLERANCE[machine.precision],
      f'conv_bn with sync_batch_norm, a training step of global batch '
      f'{global_batch}, {_replicas(machine.replicas)} against 1: moving '
      f'statistics\' updates {statistics:.1e} apart (largest, relative), '
      f'training loss {loss:.1e}')


def _eval_logits_kernel(model: keras.Model) -> None:
  """Sets dense_softmax's logits to (4 * pixel (0, 0), 4 * pixel (0, 1), 0,
  ..., 0) of the scaled image: exact in every precision."""
  kernel = np.zeros(model.get_layer('logits').kernel.shape, np.float32)
  kernel[0, 0] = kernel[1, 1] = 4.0
  model.get_layer('logits').kernel.assign(kernel)
  model.get_layer('logits').bias.assign(np.zeros(10, np.float32))


def _expected_eval(split: input_pipeline.Split) -> tuple[float, int]:
  """(loss sum, correct) of _eval_logits_kernel's model on split, float64."""
  flat = split.images.reshape(len(split), -1).astype(np.float64) / 256
  logits = np.zeros((len(split), 10))
  logits[:, :2] = 4 * flat[:, :2]
  top = logits.max(axis=1)
  log_sum = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
  labels = split.labels.astype(np.int64)
  losses = log_sum - logits[np.arange(len(split)), labels]
  return float(losses.sum()), int(np.sum(logits.argmax(axis=1) == labels))


def exact_eval(machine: Machine, sizes: Sizes) -> Measured:
  eval_batch = sizes.per_replica_batch * machine.replicas
  num_examples = 4 * eval_batch + 1
  split = input_pipeline.Split(_indexed_images(num_examples),
                               (np.arange(num_examples) * 7 % 10).astype(
                                   np.uint8))
  learner = _build(_config({'model.name': 'dense_softmax'}), machine.strategy,
                   precision=machine.precision)
  _eval_logits_kernel(learner.model)
  iterator = input_pipeline.distributed_iterator(
      machine.strategy, input_pipeline.eval_dataset, split=split,
      global_batch_size=eval_batch)
  loop = steps.make_eval_loop(
      strategy=machine.strategy,
      eval_step=steps.make_eval_step(model=learner.model))
  totals = loop(iterator, tf.constant(
      input_pipeline.eval_steps(num_examples, eval_batch))).numpy()
  loss_sum, correct = _expected_eval(split)
  checksum = _relative(totals.loss, loss_sum)
  return Measured(
      checksum, EVAL_CHECKSUM_TOLERANCE,
      f'{num_examples} examples in eval batches of {eval_batch} on '
      f'{_replicas(machine.replicas)}: counted {totals.count:.0f}, correct '
      f'{totals.correct:.0f} of {correct}, loss checksum {checksum:.1e} off '
      '(relative)',
      exact=totals.count == num_examples and totals.correct == correct)


def xla_step(machine: Machine, sizes: Sizes) -> Measured | Skipped:
  if machine.device_kind == 'TPU':
    return Skipped('TPU: XLA only')
  config = _config({'model.name': 'conv_bn', 'optimizer.learning_rate': 0.001})
  global_batch = sizes.per_replica_batch
  split = _split(config, global_batch * sizes.train_steps)
  # One replica: XLA compiles each replica's forward and backward pass
  # alike; the all-reduce and the update stay outside it.
  strategy = machine.one_replica
  plain, compiled = _build_pair(config, strategy, strategy,
                                precision=machine.precision)
  start = _variables(plain.model)
  kwargs = dict(split=split, config=config, global_batch=global_batch,
                num_steps=sizes.train_steps)
  plain_totals = _train(plain, strategy, jit_compile=False, **kwargs)
  compiled_totals = _train(compiled, strategy, jit_compile=True, **kwargs)
  plain_moves = [a - b for a, b in zip(_variables(plain.model), start)]
  compiled_moves = [a - b for a, b in zip(_variables(compiled.model), start)]
  update = _max_ratio([a - b for a, b in zip(compiled_moves, plain_moves)],
                      plain_moves, norm=np.linalg.norm)
  loss = _relative(compiled_totals.loss, plain_totals.loss)
  return Measured(
      update, XLA_UPDATE_TOLERANCE,
      f'conv_bn, {sizes.train_steps} SGD steps of batch {global_batch} on one '
      f'{machine.device_kind}, with and without XLA: updates '
      f'{update:.1e} apart (largest, relative), loss {loss:.1e} (within '
      f'{XLA_LOSS_TOLERANCE:g})',
      exact=loss <= XLA_LOSS_TOLERANCE)


def _replica_values(strategy, variable) -> list[float]:
  """Each replica's copy of a Keras variable."""
  return [float(np.asarray(copy)) for copy in
          strategy.experimental_local_results(variable.value)]


def _loss_scale_phase(optimizer, machine: Machine, loop, split, *,
                      global_batch: int, initial_scale: float,
                      num_steps: int) -> list[tuple[float, float]]:
  """Trains num_steps from initial_scale; each replica's (scale, counter)."""
  optimizer.dynamic_scale.assign(initial_scale)
  optimizer.step_counter.assign(0)
  loop(_same_batches(machine.strategy, split, global_batch=global_batch,
                     num_steps=num_steps), tf.constant(num_steps))
  return list(zip(_replica_values(machine.strategy, optimizer.dynamic_scale),
                  _replica_values(machine.strategy, optimizer.step_counter)))


def loss_scale(machine: Machine, sizes: Sizes) -> Measured | Skipped:
  if machine.device_kind == 'TPU':
    return Skipped('TPU: no float16')
  config = _config({'model.name': 'dense', 'optimizer.learning_rate': 0.05})
  global_batch = sizes.per_replica_batch * machine.replicas
  num_steps = sizes.train_steps
  split = _split(config, global_batch * num_steps)
  learner = _build(config, machine.strategy, precision='mixed_float16')
  loop = _loop(learner, machine.strategy, config=config,
               global_batch=global_batch)
  kwargs = dict(split=split, global_batch=global_batch, num_steps=num_steps)
  # Far above and far below where float16 overflows (~2^19 here): every
  # replica overflows at each step, then none does.
  skipping = _loss_scale_phase(learner.optimizer, machine, loop,
                               initial_scale=OVERFLOWING_LOSS_SCALE, **kwargs)
  counting = _loss_scale_phase(learner.optimizer, machine, loop,
                               initial_scale=SAFE_LOSS_SCALE, **kwargs)
  differing = sum(copy != copies[0] for copies in (skipping, counting)
                  for copy in copies)
  expected = [(OVERFLOWING_LOSS_SCALE / 2**num_steps, 0),
              (SAFE_LOSS_SCALE, num_steps)]
  finite = all(np.isfinite(v).all() for v in _variables(learner.model))

  def scales(copies):
    return ', '.join(f'2^{math.log2(scale):g} (counter {counter:.0f})'
                     for scale, counter in copies)
  return Measured(
      differing, 0,
      f'dense in mixed_float16, global batch {global_batch}, on each replica:'
      f' {num_steps} steps from a loss scale of '
      f'2^{math.log2(OVERFLOWING_LOSS_SCALE):g} (all overflow, all skipped):'
      f' {scales(skipping)}; {num_steps} from '
      f'2^{math.log2(SAFE_LOSS_SCALE):g} (none overflows): '
      f'{scales(counting)}; {differing} copies differ from the first '
      f'replica\'s; weights {"finite" if finite else "NOT finite"}',
      exact=finite and [skipping[0], counting[0]] == expected)


def speed(machine: Machine, sizes: Sizes) -> Measured:
  config = config_lib.default_config()  # conv_bn: Adam, dropout 0.3.
  config.data.source = 'synthetic'
  global_batch = math.ceil(sizes.speed_batch / machine.replicas) * (
      machine.replicas)
  split = _split(config, global_batch * sizes.speed_steps)
  learner = _build(config, machine.strategy, precision=machine.precision)
  loop = _loop(learner, machine.strategy, config=config,
               global_batch=global_batch, jit_compile=machine.jit_compile)
  iterator = _distributed_input(machine.strategy, split,
                                global_batch=global_batch, seed=config.seed)
  loop(iterator, tf.constant(sizes.speed_steps)).numpy()  # Traces, warms up.
  start = time.perf_counter()
  totals = loop(iterator, tf.constant(sizes.speed_steps)).numpy()
  examples_per_s = totals.count / (time.perf_counter() - start)
  dtype = MATMUL_DTYPE[machine.precision]
  device = machine.strategy.extended.worker_devices[0]
  with tf.device(device):
    gflops = matmul.matmul_gflops(dtype, size=sizes.matmul_size, tries=2,
                                  seconds=sizes.matmul_seconds)
  return Measured(
      examples_per_s, None,
      f'conv_bn (Adam, dropout 0.3) {examples_per_s:,.0f} examples/s, global '
      f'batch {global_batch}, {sizes.speed_steps} steps on '
      f'{_replicas(machine.replicas)}, {machine.precision}, XLA '
      f'{"on" if machine.jit_compile else "off"}; {dtype} matmul '
      f'{sizes.matmul_size}x{sizes.matmul_size} {gflops:,.0f} GFLOP/s on '
      f'{tf.DeviceSpec.from_string(device).device_type}:'
      f'{tf.DeviceSpec.from_string(device).device_index}',
      exact=math.isfinite(gflops) and gflops > 0,
      figures={'examples_per_s': round(examples_per_s, 1),
               'matmul_gflops': round(gflops, 1), 'matmul_dtype': dtype})


# The rows, in the order they run and print. A new property is one more
# Check here (and its break in tests/test_selftest.py).
CHECKS = (
    Check('same_global_batches', 'every topology sees the same global batches',
          same_global_batches, multi_replica=True),
    Check('same_weights', 'one replica and all replicas reach the same '
          'weights (SGD)', same_weights, multi_replica=True),
    Check('sync_batch_norm', 'synchronized batch norm gives the one-replica '
          'statistics', sync_batch_norm, multi_replica=True),
    Check('exact_eval', 'evaluation counts every example exactly once, by '
          'content', exact_eval),
    Check('xla_step', 'the XLA-compiled step agrees with the plain one',
          xla_step),
    Check('loss_scale', 'mixed_float16: the loss scale is the same on every '
          'replica', loss_scale, multi_replica=True),
    Check('accumulation', 'k micro-batches a replica give the whole '
          "batch's update", accumulation),
    Check('speed', 'conv_bn examples/s and the matmul rate (informational)',
          speed),
)


# --- running the rows, the table, the command ---


def _one_replica(strategy: tf.distribute.Strategy) -> tf.distribute.Strategy:
  """A one-replica strategy on the first of strategy's devices."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    # One TPU core: a device assignment of one replica on the topology that
    # strategy.create_strategy initialised (TensorFlow keeps it, privately).
    from tensorflow.python.tpu import tpu_strategy_util  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
    (topology,) = tpu_strategy_util.get_initialized_tpu_systems().values()
    return tf.distribute.TPUStrategy(
        strategy.cluster_resolver,
        experimental_device_assignment=(
            tf.tpu.experimental.DeviceAssignment.build(topology,
                                                       num_replicas=1)))
  return tf.distribute.OneDeviceStrategy(strategy.extended.worker_devices[0])


def find_machine(*, cpu_devices: int, tpu: str = 'local') -> Machine:
  """This machine's devices under what `auto` picks, as the trainer would.

  Raises:
    ConfigError: no TPU reachable, or a CPU split TensorFlow cannot make.
  """
  config = config_lib.default_config()
  config.distribution.cpu_devices = cpu_devices
  config.distribution.tpu = tpu
  config_lib.validate(config)
  strategy = strategy_lib.create_strategy(config.distribution)
  kind = strategy_lib.device_kind(strategy)
  settings = strategy_lib.device_settings(
      config.train, device_kind=kind, steps_per_epoch=(
          config_lib.TRAIN_EXAMPLES // config.train.global_batch_size))
  return Machine(strategy=strategy, one_replica=_one_replica(strategy),
                 device_kind=kind, precision=settings.precision,
                 jit_compile=settings.jit_compile)


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0] if lines else ""}'


def run_check(check: Check, machine: Machine, sizes: Sizes) -> Row:
  """The row of one check; one that raises is a failed row, named."""
  started = time.perf_counter()
  if check.multi_replica and machine.replicas == 1:
    result = Skipped('1 replica')
  else:
    try:
      result = check.measure(machine, sizes)
    except Exception as e:  # pylint: disable=broad-except
      # Whatever the project's code raises on this machine is its failure.
      result = Measured(math.nan, None, f'raised {_first_line(e)}',
                        exact=False)
  if isinstance(result, Skipped):
    row = Row(check.name, check.claim, f'skipped ({result.reason})', None,
              None, 'needs 2 or more replicas (on a CPU: --cpu_devices=2)'
              if result.reason == '1 replica' else 'does not apply here')
  else:
    row = Row(check.name, check.claim, 'pass' if result.passed else 'fail',
              None if math.isnan(result.value) else result.value,
              result.tolerance, result.detail, result.figures)
  logging.info('%s: %s in %.1f s', row.name, row.status,
               time.perf_counter() - started)
  return row


def run_checks(machine: Machine, *, sizes: Sizes = Sizes(),
               checks: tuple[Check, ...] = CHECKS) -> list[Row]:
  """Every row, in order; the Keras precision policy is left as it was."""
  policy = keras.mixed_precision.global_policy()
  try:
    return [run_check(check, machine, sizes) for check in checks]
  finally:
    keras.mixed_precision.set_global_policy(policy)


def _number(value: float | None) -> str:
  if value is None:
    return '-'
  if value == int(value) or abs(value) >= 100:
    return f'{value:,.0f}'
  return f'{value:.2g}'


def _summary(rows: list[Row]) -> str:
  failed = sum(row.failed for row in rows)
  skipped = [row for row in rows if row.skipped]
  passed = len(rows) - failed - len(skipped)
  text = f'{len(rows)} rows: {passed} passed, {failed} failed'
  if skipped:
    text += (f', {len(skipped)} skipped '
             f'({", ".join(row.name for row in skipped)}): skipped is not a '
             'failure, but it checked nothing')
  return text


def format_table(rows: list[Row], machine: Machine) -> str:
  """The rows as a plain-text table under a line naming the machine."""
  settings = machine.describe()
  lines = [f'mnist-dist-selftest: {settings["strategy"]}, '
           f'{_replicas(machine.replicas)} on {machine.device_kind}, '
           f'{machine.precision}, XLA {"on" if machine.jit_compile else "off"}'
           ' (what auto picks here)']
  table = [('row', 'result', 'measured', 'tolerance', 'what it measured')]
  table += [(row.name, row.status.upper() if row.failed else row.status,
             _number(row.measured),
             'informational' if row.tolerance is None and (
                 row.measured is not None) else _number(row.tolerance),
             row.detail) for row in rows]
  widths = [max(len(cells[i]) for cells in table) for i in range(4)]
  for cells in table:
    lines.append('  '.join(cell.ljust(width) for cell, width in
                           zip(cells, widths)) + '  ' + cells[4])
  lines.append(_summary(rows))
  return '\n'.join(lines)


def report(rows: list[Row], machine: Machine, *, elapsed_s: float) -> dict:
  """The JSON --out holds."""
  return {'machine': machine.describe(),
          'passed': not any(row.failed for row in rows),
          'summary': _summary(rows), 'elapsed_s': round(elapsed_s, 1),
          'rows': [dataclasses.asdict(row) for row in rows]}


class _ArgumentParser(argparse.ArgumentParser):
  """A bad flag is one `error:` line and exit 2, without the usage."""

  def error(self, message):
    cli.fail(message, errors.EXIT_BAD_INPUT)


def _count(text: str) -> int:
  if not text.isdigit():
    raise argparse.ArgumentTypeError(f'{text!r} is not a count (0, 1, 2, ...)')
  return int(text)


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = _ArgumentParser(
      prog='mnist-dist-selftest', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      '--cpu_devices', type=_count, default=0,
      help='N > 0: Mirrored over N logical CPUs (as the trainer\'s '
      '--config.distribution.cpu_devices); 0: what auto picks (default).')
  parser.add_argument(
      '--tpu', default='local',
      help='Where the TPU is, on a TPU host: local (a TPU VM, the default), '
      'a TPU name or grpc://host:port (--config.distribution.tpu).')
  parser.add_argument('--out', default='',
                      help='Also write the table as JSON to this file '
                      '(local or gs://).')
  parser.add_argument(
      f'--{console.TF_LOGS_FLAG}', action='store_true',
      help="Also show TensorFlow's own log lines (give it on the command "
      'line: it is read before TensorFlow loads).')
  args = parser.parse_args(argv[1:])
  # absl's own flags are not this command's; app.run wants them parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return args


def _fail(message: str) -> None:
  cli.fail(message, errors.EXIT_BAD_INPUT)


def _check_writable(out: str) -> None:
  """Fails now, not after the rows, when --out cannot be written."""
  folder = os.path.dirname(out)
  try:
    if tf.io.gfile.isdir(out):
      _fail(f'--out={out} is a folder; give a file, e.g. '
            f'{os.path.join(out, "selftest.json")}')
    if folder:
      tf.io.gfile.makedirs(folder)
  except tf.errors.OpError as e:
    _fail(f'--out={out}: {paths.cause(e)}')


def _is_retracing_warning(record) -> bool:
  return 'triggered tf.function retracing' in record.getMessage()


def run_command(args: argparse.Namespace) -> int:
  """Runs every row, prints the table, writes --out; the exit code."""
  started = time.time()
  if args.out:
    _check_writable(args.out)
  try:
    machine = find_machine(cpu_devices=args.cpu_devices, tpu=args.tpu)
  except errors.ConfigError as e:
    _fail(str(e))
  rows = run_checks(machine)
  print(format_table(rows, machine), flush=True)
  if args.out:
    try:
      workdir_lib.write_atomically(args.out, json.dumps(
          report(rows, machine, elapsed_s=time.time() - started),
          indent=2) + '\n')
    except (OSError, tf.errors.OpError) as e:
      _fail(f'--out={args.out}: cannot write it: '
            f'{paths.cause(e) if isinstance(e, tf.errors.OpError) else e}')
  # A failed row: it has printed what it measured.
  return errors.EXIT_FAILED if any(row.failed for row in rows) else 0


def main(args: argparse.Namespace) -> None:
  console.set_up(tf_logs=getattr(args, console.TF_LOGS_FLAG))
  # Every row makes loops of its own, each traced once: TensorFlow counts
  # them as retracings of one function and warns, for nothing.
  tf.get_logger().addFilter(lambda record: not _is_retracing_warning(record))
  sys.exit(run_command(args))


def run():
  """Console-script entry point."""
  cli.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
