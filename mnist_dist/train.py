"""The outer loop: sets a run up, then alternates training loops and evals.

`train_and_evaluate` is the controller. It builds the strategy, the data, the
model and the optimizer, resumes from the workdir's latest checkpoint if there
is one, and then, epoch by epoch, calls the compiled training loop from
`steps` (many steps per call), logs a line after each call, checkpoints, and
evaluates on the whole test set after each epoch.
"""

import contextlib
import dataclasses
import functools
import math
import os
import tempfile
import time

from absl import logging
import keras
import tensorflow as tf

from mnist_dist import averaging
from mnist_dist import checkpoints
from mnist_dist import config as config_lib
from mnist_dist import export
from mnist_dist import input_pipeline
from mnist_dist import interrupts
from mnist_dist import models
from mnist_dist import optimizers
from mnist_dist import plots
from mnist_dist import reporting
from mnist_dist import steps
from mnist_dist import strategy as strategy_lib
from mnist_dist import summaries


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""

  def __init__(self, step: int):
    super().__init__(
        f'the loss is not finite at step {step}; stopped, keeping the last '
        'good checkpoint (a lower optimizer.learning_rate may help, or '
        'train.on_nonfinite_loss=skip to skip such steps)')
    self.step = step


@dataclasses.dataclass
class TrainResult:
  model: keras.Model
  metrics: list[dict]  # One record per evaluation of this process.


def _distribute(strategy, dataset_fn, split, **kwargs):
  return strategy.distribute_datasets_from_function(
      functools.partial(dataset_fn, split=split, **kwargs))


def _preemption_handler(strategy, checkpointer):
  """TF's own handler where a preemption notice must reach every worker."""
  if isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                           tf.distribute.TPUStrategy)):
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, checkpointer.manager)
  return None


def _misclassified(model, split, *, count=8, among=1000):
  """A few test digits the model gets wrong, for TensorBoard (not on TPU)."""
  logits = model(split.images[:among], training=False)
  wrong = tf.argmax(logits, axis=-1).numpy() != split.labels[:among]
  return split.images[:among][wrong][:count]


def _export(model, workdir, *, chief):
  """Every worker exports, as with checkpoints; only the chief's is kept."""
  directory = (os.path.join(workdir, export.EXPORT_DIR) if chief
               else tempfile.mkdtemp())
  export.export_saved_model(model, directory)
  if chief:
    logging.info('Exported the model to %s', directory)
  else:
    tf.io.gfile.rmtree(directory)


def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Trains config's model for config.train.epochs, resuming if it can.

  Args:
    config: a config of `mnist_dist.config` (see configs/).
    workdir: where the run keeps config.json, checkpoints/ and metrics.jsonl
      (local or gs://). Starting again with the same workdir resumes.

  Returns:
    The trained model (with train.ema_decay, its averaged weights) and the
    evaluation records of this process.

  Raises:
    ConfigError, DataError: before training, for input that cannot run.
    NonFiniteLossError: the loss became NaN or infinite.
    interrupts.Interrupted: SIGTERM or SIGINT; a checkpoint was saved.
  """
  start = time.time()
  config_lib.validate(config)
  strategy = strategy_lib.create_strategy(config.distribution)
  chief = strategy_lib.is_chief(strategy)
  if not chief:
    logging.set_verbosity(logging.WARNING)  # The chief's log tells the story.
  keras.utils.set_random_seed(config.seed)

  train_split, test_split = input_pipeline.load(config.data, seed=config.seed)
  eval_split = test_split  # The codelab validates on the test set.
  if config.data.validation_split:
    train_split, eval_split = input_pipeline.hold_out(
        train_split, config.data.validation_split)
  num_replicas = strategy.num_replicas_in_sync
  global_batch = config.train.global_batch_size
  steps_per_epoch = len(train_split) // global_batch
  config_lib.check_against_run(config, num_replicas=num_replicas,
                               steps_per_epoch=steps_per_epoch)
  kind = strategy_lib.device_kind(strategy)
  settings = strategy_lib.device_settings(
      config.train, device_kind=kind, steps_per_epoch=steps_per_epoch)
  keras.mixed_precision.set_global_policy(settings.precision)
  checkpoints.check_and_record_config(config, workdir, write=chief)
  total_steps = config.train.epochs * steps_per_epoch

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
  # What evaluations, the export and the returned model use.
  evaluated_weights = average.swapped_in if average else contextlib.nullcontext
  schedule = optimizers.learning_rate_schedule(
      config.optimizer, steps_per_epoch=steps_per_epoch,
      epochs=config.train.epochs)
  # Steps taken (skipped ones included: they consume their batch too) and the
  # current epoch's sums of loss, correct, count and skipped steps.
  step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
  epoch_sums = tf.Variable(tf.zeros([4], tf.float64), trainable=False)
  checkpointer = checkpoints.Checkpointer(
      workdir=workdir, keep=config.checkpoint.keep, is_chief=chief,
      # tf.train.Checkpoint does not see into a Keras 3 model: list its
      # variables (batch-norm statistics and dropout's seed state included),
      # by position, since layer names change with what else the process built.
      model=[variable.value for variable in model.variables],
      # The inner optimizer of a LossScaleOptimizer: switching
      # train.on_nonfinite_loss between runs must not orphan its state.
      optimizer=getattr(optimizer, 'inner_optimizer', optimizer),
      step=step_var, epoch_sums=epoch_sums,
      **({'weight_average': [*average.averages, average.updates]}
         if average else {}))
  restored = checkpointer.restore_latest()
  step = int(step_var.numpy())
  if restored:
    logging.info('Resuming from %s at step %d (epoch %d).', restored, step,
                 step // steps_per_epoch + 1)

  train_iterator = iter(_distribute(
      strategy, input_pipeline.train_dataset, train_split,
      global_batch_size=global_batch, seed=config.seed, start_step=step,
      augment_config=config.data.augment))
  eval_batch = math.ceil(config.train.eval_batch_size / num_replicas) * (
      num_replicas)

  def evaluator(split, signals):
    """evaluate() -> [loss sum, correct, count] over all of split."""
    iterator = iter(_distribute(strategy, input_pipeline.eval_dataset, split,
                                global_batch_size=eval_batch))
    loop = steps.make_eval_loop(
        strategy=strategy, model=model,
        num_steps=input_pipeline.eval_steps(len(split), eval_batch))

    def evaluate():
      with evaluated_weights():
        return signals.call(loop, iterator).numpy()
    return evaluate


  logging.info('%s: %d replicas on %s, global batch %d, %d steps per epoch '
               'in loops of %d, XLA %s, precision %s', config.model.name,
               num_replicas, kind, global_batch, steps_per_epoch,
               settings.steps_per_loop, 'on' if settings.jit_compile else 'off',
               settings.precision)
  stop_on_nonfinite = config.train.on_nonfinite_loss == 'stop'
  train_loop = steps.make_train_loop(
      strategy=strategy, model=model, optimizer=optimizer,
      global_batch_size=global_batch, jit_compile=settings.jit_compile,
      stop_on_nonfinite=stop_on_nonfinite,
      label_smoothing=config.train.label_smoothing, weight_average=average)
  writer = reporting.MetricsWriter(workdir, resume_step=step) if chief else None
  board = summaries.Summaries(workdir,
                              enabled=chief and config.outputs.tensorboard)
  board.write_config(config)
  preemption = _preemption_handler(strategy, checkpointer)

  def learning_rate():
    # The rate of the last step taken: the schedule counts applied updates.
    return float(schedule(max(int(optimizer.iterations.numpy()) - 1, 0)))

  def stop_if_asked():
    """Checkpoints and stops on a signal or a preemption notice."""
    if preemption:
      preemption.save_checkpoint_if_preempted()
    if signals.requested:
      if last_saved != step:
        checkpointer.save(step)
      raise interrupts.Interrupted(signals.requested, step)

  target = config.train.stop_at_accuracy
  if target and any(r['eval_accuracy'] >= target and r['step'] <= step
                    for r in reporting.read_metrics(workdir)):
    total_steps = step  # Resuming a run that had already reached its target.

  loops_start, loops_first_step = time.time(), step
  last_saved = step
  records = []
  with interrupts.SignalWatch() as signals:
    evaluate = evaluator(eval_split, signals)
    while step < total_steps:
      epoch = step // steps_per_epoch
      epoch_end = (epoch + 1) * steps_per_epoch
      epoch_train_s = 0.0
      while step < epoch_end:
        loop_start = time.time()
        result = {k: v.numpy() for k, v in signals.call(
            train_loop, train_iterator,
            tf.constant(min(settings.steps_per_loop,
                            epoch_end - step))).items()}
        loop_s = time.time() - loop_start
        step += int(result['steps'])
        if result['nonfinite_steps'] and stop_on_nonfinite:
          raise NonFiniteLossError(step)
        step_var.assign(step)
        epoch_sums.assign_add([result['loss'], result['correct'],
                               result['count'], result['nonfinite_steps']])
        epoch_train_s += loop_s
        steps_per_s = (step - loops_first_step) / (time.time() - loops_start)
        count = max(result['count'], 1)
        board.write_train(step, loss=result['loss'] / count,
                          accuracy=result['correct'] / count,
                          learning_rate=learning_rate(),
                          examples_per_s=result['count'] / loop_s)
        logging.info(reporting.loop_line(
            step=step, total_steps=total_steps, epoch=epoch + 1,
            epochs=config.train.epochs, loss=result['loss'] / count,
            accuracy=result['correct'] / count,
            learning_rate=learning_rate(),
            examples_per_s=result['count'] / loop_s,
            eta_s=(total_steps - step) / steps_per_s))
        if step == epoch_end:
          break  # The epoch's evaluation comes before any checkpoint.
        stop_if_asked()
        if (step // config.checkpoint.every_steps >
            last_saved // config.checkpoint.every_steps):
          checkpointer.save(step)
          last_saved = step

      eval_loss, eval_correct, eval_count = evaluate()
      train_loss, train_correct, train_count, skipped = epoch_sums.numpy()
      record = {
          'step': step,
          'epoch': epoch + 1,
          'train_loss': float(train_loss / max(train_count, 1)),
          'train_accuracy': float(train_correct / max(train_count, 1)),
          'eval_loss': float(eval_loss / eval_count),
          'eval_accuracy': float(eval_correct / eval_count),
          'eval_examples': int(eval_count),
          'learning_rate': learning_rate(),
          'nonfinite_steps': int(skipped),
          'elapsed_s': round(time.time() - start, 3),
          'wall_time': round(time.time(), 3),
          'examples_per_s': round(train_count / max(epoch_train_s, 1e-9), 1),
      }
      logging.info('eval epoch %d: loss %.4f accuracy %.2f%% on %d examples',
                   epoch + 1, record['eval_loss'],
                   100 * record['eval_accuracy'], record['eval_examples'])
      reached = bool(target) and record['eval_accuracy'] >= target
      if reached:
        logging.info('Reached train.stop_at_accuracy=%s: stopping.', target)
        total_steps = step
      if step >= total_steps and config.data.validation_split:
        # Chosen on the validation set; the test set is looked at once.
        test_loss, test_correct, test_count = evaluator(test_split, signals)()
        record.update(test_loss=float(test_loss / test_count),
                      test_accuracy=float(test_correct / test_count),
                      test_examples=int(test_count))
        logging.info('test: loss %.4f accuracy %.2f%% on %d examples',
                     record['test_loss'], 100 * record['test_accuracy'],
                     record['test_examples'])
      records.append(record)
      if writer:
        writer.write(record)
        reporting.report_to_tuning_service(writer.records,
                                           metric='eval_accuracy')
      with evaluated_weights():
        board.write_eval(
            step, loss=record['eval_loss'], accuracy=record['eval_accuracy'],
            misclassified_images=None if kind == 'TPU' or not board.enabled
            else _misclassified(model, eval_split))
      epoch_sums.assign(tf.zeros([4], tf.float64))
      checkpointer.save(step)
      last_saved = step
      stop_if_asked()
  board.close()
  if average:
    average.keep()  # From here on the model is the one the evaluations saw.
  if records and config.outputs.saved_model:
    _export(model, workdir, chief=chief)
  if records and chief and config.outputs.plots:
    written = plots.make_all(workdir)
    logging.info('Wrote %d plots to %s', len(written),
                 os.path.join(workdir, plots.PLOTS_DIR))
  return TrainResult(model=model, metrics=records)
