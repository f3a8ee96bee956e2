"""The model, what trains and evaluates it, and what a checkpoint holds.

`build_model` makes the `Learner` (the Keras model, its optimizer with its
slots built, and the weight average) in the strategy's scope;
`make_train_loop` and `make_evaluators` the compiled loops that train and
evaluate it as the config says, the controller's trainer and evaluator (as
orbit's are); `checkpointer` lists every variable the next step depends on,
the model's by position, and the `Counters` of where the run is, so that a
restored run continues exactly.
"""

import contextlib
import dataclasses
import math
from typing import Callable

import keras
import tensorflow as tf

from mnist_dist import checkpoints
from mnist_dist import steps
from mnist_dist.data import input_pipeline
from mnist_dist.modeling import averaging
from mnist_dist.modeling import models
from mnist_dist.modeling import optimizers


@dataclasses.dataclass
class Learner:
  """The model and what trains it, built in the strategy's scope."""
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  average: averaging.WeightAverage | None

  def evaluated_weights(self):
    """The weights evaluations and the export see: the average, if any."""
    return self.average.swapped_in() if self.average else (
        contextlib.nullcontext())

  def finite(self) -> bool:
    """Whether every floating-point variable of the model is finite."""
    return all(bool(tf.reduce_all(tf.math.is_finite(v)))
               for v in self.model.variables
               if tf.as_dtype(v.dtype).is_floating)


def _variable(value, dtype):
  return tf.Variable(value, dtype=dtype, trainable=False)


@dataclasses.dataclass
class Counters:
  """Checkpointed with the model: where the run is."""
  # Steps taken (skipped ones included: they consume their batch too).
  step: tf.Variable = dataclasses.field(
      default_factory=lambda: _variable(0, tf.int64))
  # The current epoch's steps.Totals so far, by name.
  epoch_totals: dict[str, tf.Variable] = dataclasses.field(
      default_factory=lambda: {name: _variable(0.0, tf.float64)
                               for name in steps.Totals._fields})
  # [workers, replicas] of the run that saved the checkpoint.
  topology: tf.Variable = dataclasses.field(
      default_factory=lambda: _variable([0, 0], tf.int64))
  # The last evaluation's accuracy: a run stopped by train.stop_at_accuracy
  # stays stopped when started again.
  eval_accuracy: tf.Variable = dataclasses.field(
      default_factory=lambda: _variable(0.0, tf.float64))

  def epoch(self) -> steps.Totals:
    return steps.Totals(**{name: float(variable.numpy())
                           for name, variable in self.epoch_totals.items()})


def build_model(config, *, strategy, settings,
                steps_per_epoch: int) -> Learner:
  """The model, its optimizer (slots built) and weight average, in scope."""
  keras.mixed_precision.set_global_policy(settings.precision)
  with strategy.scope():
    model = models.create_model(config.model)
    optimizer = optimizers.create_optimizer(
        config.optimizer, steps_per_epoch=steps_per_epoch,
        epochs=config.train.epochs, precision=settings.precision,
        skip_nonfinite=config.train.on_nonfinite_loss == 'skip')
    # Slots made now, not lazily inside the first replicated step.
    optimizer.build(model.trainable_variables)
    average = (averaging.WeightAverage(model, decay=config.train.ema_decay)
               if config.train.ema_decay else None)
  return Learner(model=model, optimizer=optimizer, average=average)


def make_train_loop(config, *, strategy, learner: Learner,
                    settings) -> Callable[..., steps.Totals]:
  """The run's train_loop(iterator, num_steps) -> steps.Totals.

  Trains learner as config.train says (global_batch_size, label_smoothing,
  accumulation_steps; on_nonfinite_loss='stop' ends a call at the first
  non-finite loss), its step compiled with XLA if settings.jit_compile
  (`strategy.DeviceSettings`). The controller and the self-test both train
  through it.
  """
  return steps.make_train_loop(
      strategy=strategy, train_step=steps.make_train_step(
          model=learner.model, optimizer=learner.optimizer,
          global_batch_size=config.train.global_batch_size,
          jit_compile=settings.jit_compile,
          label_smoothing=config.train.label_smoothing,
          weight_average=learner.average,
          accumulation_steps=config.train.accumulation_steps),
      stop_on_nonfinite=config.train.on_nonfinite_loss == 'stop')


def round_to_replicas(batch_size: int, *, replicas: int) -> int:
  """batch_size rounded up to a multiple of replicas, so that every replica
  gets the same share (an eval batch: the padding is masked out)."""
  return math.ceil(batch_size / replicas) * replicas


def make_evaluators(config, *, strategy, learner: Learner, splits,
                    replicas: int) -> dict[str, Callable[..., steps.Totals]]:
  """{'eval', 'test'}: evaluate(signals) -> steps.Totals over that split.

  Each evaluates the learner's evaluated weights (the average, if any) in
  batches of config.train.eval_batch_size rounded up to whole replicas;
  signals: an `interrupts.SignalWatch`, so that a signal ends the call.
  """
  eval_batch = round_to_replicas(config.train.eval_batch_size,
                                 replicas=replicas)
  # One for both splits: one trace.
  eval_loop = steps.make_eval_loop(
      strategy=strategy, eval_step=steps.make_eval_step(model=learner.model))

  def make_evaluator(split):
    iterator = input_pipeline.distributed_iterator(
        strategy, input_pipeline.eval_dataset, split=split,
        global_batch_size=eval_batch)
    num_steps = tf.constant(input_pipeline.eval_steps(len(split), eval_batch))

    def evaluate_split(signals):
      with learner.evaluated_weights():
        return signals.call(eval_loop, iterator, num_steps).numpy()
    return evaluate_split
  return {name: make_evaluator(splits[name]) for name in ('eval', 'test')}


def checkpointer(config, workdir: str, *, chief: bool, learner: Learner,
                 settings, counters: Counters) -> checkpoints.Checkpointer:
  """Checkpoints of everything the next step depends on."""
  optimizer = learner.optimizer
  return checkpoints.Checkpointer(
      workdir=workdir, keep=config.checkpoint.keep, is_chief=chief,
      async_save=config.checkpoint.async_save,
      # tf.train.Checkpoint does not see into a Keras 3 model: list its
      # variables (batch-norm statistics and dropout's seed state included),
      # by position, since layer names change with what else the process built.
      model=[variable.value for variable in learner.model.variables],
      # The inner optimizer of a LossScaleOptimizer: switching
      # train.on_nonfinite_loss between runs must not orphan its state.
      optimizer=getattr(optimizer, 'inner_optimizer', optimizer),
      step=counters.step, epoch_totals=counters.epoch_totals,
      topology=counters.topology, eval_accuracy=counters.eval_accuracy,
      # Dynamic loss scaling's state (train.precision, which decides it, is
      # run-defining): the scale and the steps since it last grew.
      **({'loss_scale': [optimizer.dynamic_scale, optimizer.step_counter]}
         if settings.precision == 'mixed_float16' else {}),
      **({'weight_average': [*learner.average.averages,
                             learner.average.updates]}
         if learner.average else {}))
