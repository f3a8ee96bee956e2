"""The outer loop: sets a run up, then alternates training loops and evals.

`train_and_evaluate` is the controller. It builds the strategy, the data, the
model and the optimizer, and then, epoch by epoch, calls the compiled training
loop from `steps` (many steps per call), logs a line after each call and
evaluates on the whole test set after each epoch.
"""

import dataclasses
import functools
import math
import time

from absl import logging
import keras
import tensorflow as tf

from mnist_dist import config as config_lib
from mnist_dist import input_pipeline
from mnist_dist import models
from mnist_dist import optimizers
from mnist_dist import reporting
from mnist_dist import steps
from mnist_dist import strategy as strategy_lib


@dataclasses.dataclass
class TrainResult:
  model: keras.Model
  metrics: list[dict]  # One record per evaluation, as in metrics.jsonl.


def _use_xla(setting: str, device_kind: str) -> bool:
  if setting == 'auto':
    # Measured here: XLA made the conv_bn step on CPU ~2.8x slower.
    return device_kind == 'GPU'
  # TPUs compile the whole loop with XLA whatever this says.
  return setting == 'on' and device_kind != 'TPU'


def _distribute(strategy, dataset_fn, split, **kwargs):
  return strategy.distribute_datasets_from_function(
      functools.partial(dataset_fn, split=split, **kwargs))


def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Trains config's model for config.train.epochs; writes WORKDIR/metrics.jsonl.

  Args:
    config: a config of `mnist_dist.config` (see configs/).
    workdir: where the run writes its outputs (local or gs://).

  Returns:
    The trained model and the evaluation records.
  """
  start = time.time()
  config_lib.validate(config)
  strategy = strategy_lib.create_strategy(config.distribution)
  keras.utils.set_random_seed(config.seed)
  keras.mixed_precision.set_global_policy(config.train.precision)

  train_split, test_split = input_pipeline.load(config.data, seed=config.seed)
  num_replicas = strategy.num_replicas_in_sync
  global_batch = config.train.global_batch_size
  steps_per_epoch = len(train_split) // global_batch
  config_lib.check_against_run(config, num_replicas=num_replicas,
                               steps_per_epoch=steps_per_epoch)
  total_steps = config.train.epochs * steps_per_epoch

  with strategy.scope():
    model = models.create_model(config.model)
    optimizer = optimizers.create_optimizer(
        config.optimizer, steps_per_epoch=steps_per_epoch,
        precision=config.train.precision)
    # Slots made now, not lazily inside the first replicated step.
    optimizer.build(model.trainable_variables)
  schedule = optimizers.learning_rate_schedule(
      config.optimizer, steps_per_epoch=steps_per_epoch)

  train_iterator = iter(_distribute(
      strategy, input_pipeline.train_dataset, train_split,
      global_batch_size=global_batch, seed=config.seed))
  eval_batch = math.ceil(config.train.eval_batch_size / num_replicas) * (
      num_replicas)
  eval_iterator = iter(_distribute(
      strategy, input_pipeline.eval_dataset, test_split,
      global_batch_size=eval_batch))

  kind = strategy_lib.device_kind(strategy)
  jit = _use_xla(config.train.jit_compile, kind)
  logging.info('%s: %d replicas on %s, global batch %d, %d steps per epoch, '
               'XLA %s, precision %s', config.model.name, num_replicas, kind,
               global_batch, steps_per_epoch, 'on' if jit else 'off',
               config.train.precision)
  train_loop = steps.make_train_loop(
      strategy=strategy, model=model, optimizer=optimizer,
      global_batch_size=global_batch, jit_compile=jit)
  eval_loop = steps.make_eval_loop(
      strategy=strategy, model=model,
      num_steps=input_pipeline.eval_steps(len(test_split), eval_batch))
  chief = strategy_lib.is_chief(strategy)
  writer = reporting.MetricsWriter(workdir) if chief else None

  step = int(optimizer.iterations.numpy())
  loops_start, loops_first_step = time.time(), step
  records = []
  while step < total_steps:
    epoch = step // steps_per_epoch
    epoch_end = (epoch + 1) * steps_per_epoch
    epoch_totals, epoch_train_s = tf.zeros([3], tf.float64), 0.0
    while step < epoch_end:
      num_steps = min(config.train.steps_per_loop, epoch_end - step)
      loop_start = time.time()
      totals = train_loop(train_iterator, tf.constant(num_steps))
      loss, correct, count = totals.numpy()
      loop_s = time.time() - loop_start
      step += num_steps
      epoch_totals += tf.cast(totals, tf.float64)
      epoch_train_s += loop_s
      steps_per_s = (step - loops_first_step) / (time.time() - loops_start)
      logging.info(reporting.loop_line(
          step=step, total_steps=total_steps, epoch=epoch + 1,
          epochs=config.train.epochs, loss=loss / count,
          accuracy=correct / count,
          learning_rate=float(schedule(step - 1)),
          examples_per_s=count / loop_s,
          eta_s=(total_steps - step) / steps_per_s))

    eval_loss, eval_correct, eval_count = eval_loop(eval_iterator).numpy()
    train_loss, train_correct, train_count = epoch_totals.numpy()
    record = {
        'step': step,
        'epoch': epoch + 1,
        'train_loss': float(train_loss / train_count),
        'train_accuracy': float(train_correct / train_count),
        'eval_loss': float(eval_loss / eval_count),
        'eval_accuracy': float(eval_correct / eval_count),
        'eval_examples': int(eval_count),
        'learning_rate': float(schedule(step - 1)),
        'elapsed_s': round(time.time() - start, 3),
        'examples_per_s': round(train_count / epoch_train_s, 1),
    }
    records.append(record)
    logging.info('eval epoch %d: loss %.4f accuracy %.2f%% on %d examples',
                 epoch + 1, record['eval_loss'], 100 * record['eval_accuracy'],
                 record['eval_examples'])
    if writer:
      writer.write(record)
  return TrainResult(model=model, metrics=records)
