"""The controller: builds a run, then alternates training epochs and evals.

`train_and_evaluate` reads as a run goes:

  run = build_run(config, workdir)       strategy, data, model, loops, outputs
  state = resume(run)                    from the latest checkpoint, if any
  while not state.finished:
    train_epoch(run, state, signals)     compiled loops of many steps each
    record = evaluate(run, state, signals)
    publish(run, state, record)          log, metrics.jsonl, TensorBoard
    end_epoch(run, state, signals)       checkpoint; stop if any worker asked
  finish(run, state)                     export and plots

`Run` is what is built once; `TrainState` is what changes. Every worker of a
cluster runs the same steps in the same order, since each loop, evaluation,
checkpoint and stop vote is a collective; only the chief writes files.
"""

import contextlib
import dataclasses
import functools
import math
import tempfile
import time
from typing import Callable

from absl import logging
import keras
import ml_collections
import tensorflow as tf

from mnist_dist import averaging
from mnist_dist import checkpoints
from mnist_dist import cluster
from mnist_dist import config as config_lib
from mnist_dist import export
from mnist_dist import input_pipeline
from mnist_dist import interrupts
from mnist_dist import litert
from mnist_dist import models
from mnist_dist import optimizers
from mnist_dist import plots
from mnist_dist import reporting
from mnist_dist import steps
from mnist_dist import strategy as strategy_lib
from mnist_dist import summaries
from mnist_dist import workdir as workdir_lib


class NonFiniteLossError(RuntimeError):
  """The loss or weights became NaN or infinite; the last good one is kept."""

  def __init__(self, step: int, what: str = 'loss'):
    super().__init__(
        f'the {what} {"is" if what == "loss" else "are"} not finite at step '
        f'{step}; stopped, keeping the last good checkpoint (a lower '
        'optimizer.learning_rate may help, or train.on_nonfinite_loss=skip to '
        'skip such steps)')
    self.step = step


@dataclasses.dataclass
class TrainResult:
  model: keras.Model
  metrics: list[dict]  # One record per evaluation of this process.


@dataclasses.dataclass
class Model:
  """The model and what trains it, built in the strategy's scope."""
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  average: averaging.WeightAverage | None

  def evaluated_weights(self):
    """The weights evaluations and the export see: the average, if any."""
    return self.average.swapped_in() if self.average else (
        contextlib.nullcontext())


@dataclasses.dataclass
class Counters:
  """Checkpointed with the model: where the run is."""
  # Steps taken (skipped ones included: they consume their batch too).
  step: tf.Variable = dataclasses.field(default_factory=lambda: tf.Variable(
      0, dtype=tf.int64, trainable=False))
  # The current epoch's steps.Totals so far.
  epoch_totals: tf.Variable = dataclasses.field(
      default_factory=lambda: tf.Variable(
          tf.zeros([len(steps.Totals._fields)], tf.float64), trainable=False))
  # [workers, replicas] of the run that saved the checkpoint.
  topology: tf.Variable = dataclasses.field(
      default_factory=lambda: tf.Variable([0, 0], dtype=tf.int64,
                                          trainable=False))


@dataclasses.dataclass
class Run:
  """What `build_run` makes once; the steps below read it."""
  config: ml_collections.ConfigDict
  workdir: str
  started: float  # time.time() when the run was built.
  strategy: tf.distribute.Strategy
  chief: bool
  topology: cluster.Topology
  settings: strategy_lib.DeviceSettings
  splits: dict[str, input_pipeline.Split]  # 'train', 'eval' and 'test'.
  steps_per_epoch: int
  total_steps: int
  trained: Model
  schedule: Callable[[int], float]  # Learning rate of the update of index n.
  train_loop: Callable[..., steps.Totals]
  evaluators: dict[str, Callable[[interrupts.SignalWatch], steps.Totals]]
  stop_vote: cluster.StopVote
  checkpointer: checkpoints.Checkpointer
  counters: 'Counters'
  board: summaries.Summaries
  progress: reporting.Progress


@dataclasses.dataclass
class TrainState:
  """What changes as the run goes."""
  step: int
  last_saved: int  # The step of the newest checkpoint.
  finished: bool  # All epochs trained, or train.stop_at_accuracy reached.
  train_iterator: object  # The distributed input, from `step` on.
  first_step: int  # The step this process started from, for speed and ETA.
  writer: reporting.MetricsWriter | None  # The chief's metrics.jsonl.
  records: list[dict] = dataclasses.field(default_factory=list)
  epoch_train_s: float = 0.0  # Time in training loops, this epoch.
  loops_start: float = dataclasses.field(default_factory=time.time)


def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Trains config's model for config.train.epochs, resuming if it can.

  Args:
    config: a config of `mnist_dist.config` (see configs/).
    workdir: where the run keeps its files (`mnist_dist.workdir`; local or
      gs://). Starting again with the same workdir resumes.

  Returns:
    The trained model (with train.ema_decay, its averaged weights) and the
    evaluation records of this process.

  Raises:
    ConfigError, DataError: before training, for input that cannot run, or
      a workdir that cannot be used or is in use.
    NonFiniteLossError: the loss or the weights became NaN or infinite.
    interrupts.Interrupted: SIGTERM or SIGINT to this or another worker; a
      checkpoint was saved.
    cluster.WorkerLost: another worker of the cluster is gone.
  """
  config_lib.validate(config)
  workdir_lib.check_usable(workdir)
  strategy = strategy_lib.create_strategy(config.distribution)
  with workdir_lib.Lock(workdir, enabled=strategy_lib.is_chief(strategy)):
    run = build_run(config, workdir)
    state = resume(run)
    with (contextlib.closing(run.progress),
          interrupts.SignalWatch() as signals,
          cluster.peer_failures(run.strategy, step_of=lambda: state.step,
                                checkpoint_dir=run.checkpointer.directory),
          run.checkpointer):
      while not state.finished:
        train_epoch(run, state, signals)
        record = evaluate(run, state, signals)
        publish(run, state, record)
        end_epoch(run, state, signals)
    finish(run, state)
  return TrainResult(model=run.trained.model, metrics=state.records)


def _distribute(strategy, dataset_fn, split, **kwargs):
  return iter(strategy.distribute_datasets_from_function(
      functools.partial(dataset_fn, split=split, **kwargs)))


def _splits(config) -> dict[str, input_pipeline.Split]:
  train_split, test_split = input_pipeline.load(config.data, seed=config.seed)
  eval_split = test_split  # The codelab validates on the test set.
  if config.data.validation_split:
    train_split, eval_split = input_pipeline.hold_out(
        train_split, config.data.validation_split)
  return {'train': train_split, 'eval': eval_split, 'test': test_split}


def build_model(config, *, strategy, settings,
                steps_per_epoch: int) -> Model:
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
  return Model(model=model, optimizer=optimizer, average=average)


def _evaluator(strategy, trained: Model, split, *, eval_batch: int):
  """evaluate(signals) -> Totals over all of split."""
  iterator = _distribute(strategy, input_pipeline.eval_dataset, split,
                         global_batch_size=eval_batch)
  loop = steps.make_eval_loop(
      strategy=strategy, eval_step=steps.make_eval_step(model=trained.model),
      num_steps=input_pipeline.eval_steps(len(split), eval_batch))

  def evaluate_split(signals):
    with trained.evaluated_weights():
      return signals.call(loop, iterator).numpy()
  return evaluate_split


def _checkpointer(config, workdir: str, *, chief: bool, trained: Model,
                  settings, counters: Counters) -> checkpoints.Checkpointer:
  """Checkpoints of everything the next step depends on."""
  optimizer = trained.optimizer
  return checkpoints.Checkpointer(
      workdir=workdir, keep=config.checkpoint.keep, is_chief=chief,
      async_save=config.checkpoint.async_save,
      # tf.train.Checkpoint does not see into a Keras 3 model: list its
      # variables (batch-norm statistics and dropout's seed state included),
      # by position, since layer names change with what else the process built.
      model=[variable.value for variable in trained.model.variables],
      # The inner optimizer of a LossScaleOptimizer: switching
      # train.on_nonfinite_loss between runs must not orphan its state.
      optimizer=getattr(optimizer, 'inner_optimizer', optimizer),
      step=counters.step, epoch_totals=counters.epoch_totals,
      topology=counters.topology,
      # Dynamic loss scaling's state (train.precision, which decides it, is
      # run-defining): the scale and the steps since it last grew.
      **({'loss_scale': [optimizer.dynamic_scale, optimizer.step_counter]}
         if settings.precision == 'mixed_float16' else {}),
      **({'weight_average': [*trained.average.averages,
                             trained.average.updates]}
         if trained.average else {}))


def build_run(config, workdir: str) -> Run:
  """Checks the config, then builds everything a run needs, in order."""
  started = time.time()
  config_lib.validate(config)
  strategy = strategy_lib.create_strategy(config.distribution)
  chief = strategy_lib.is_chief(strategy)
  if not chief:
    logging.set_verbosity(logging.WARNING)  # The chief's log tells the story.
  keras.utils.set_random_seed(config.seed)
  splits = _splits(config)
  topology = cluster.topology(strategy)
  steps_per_epoch = len(splits['train']) // config.train.global_batch_size
  config_lib.check_against_run(config, num_replicas=topology.replicas,
                               steps_per_epoch=steps_per_epoch)
  kind = strategy_lib.device_kind(strategy)
  settings = strategy_lib.device_settings(
      config.train, device_kind=kind, steps_per_epoch=steps_per_epoch)
  workdir_lib.check_and_record_config(config, workdir, write=chief)
  trained = build_model(config, strategy=strategy, settings=settings,
                        steps_per_epoch=steps_per_epoch)
  counters = Counters()
  checkpointer = _checkpointer(config, workdir, chief=chief, trained=trained,
                               settings=settings, counters=counters)
  replicas = topology.replicas
  eval_batch = math.ceil(config.train.eval_batch_size / replicas) * replicas
  logging.info('%s: %s on %s, global batch %d, %d steps per epoch in loops '
               'of %d, XLA %s, precision %s', config.model.name, topology,
               kind, config.train.global_batch_size, steps_per_epoch,
               settings.steps_per_loop,
               'on' if settings.jit_compile else 'off', settings.precision)
  board = summaries.Summaries(workdir,
                              enabled=chief and config.outputs.tensorboard)
  board.write_config(config)
  return Run(
      config=config, workdir=workdir, started=started, strategy=strategy,
      chief=chief, topology=topology, settings=settings, splits=splits,
      steps_per_epoch=steps_per_epoch,
      total_steps=config.train.epochs * steps_per_epoch, trained=trained,
      schedule=optimizers.learning_rate_schedule(
          config.optimizer, steps_per_epoch=steps_per_epoch,
          epochs=config.train.epochs),
      train_loop=steps.make_train_loop(
          strategy=strategy, train_step=steps.make_train_step(
              model=trained.model, optimizer=trained.optimizer,
              global_batch_size=config.train.global_batch_size,
              jit_compile=settings.jit_compile,
              label_smoothing=config.train.label_smoothing,
              weight_average=trained.average),
          stop_on_nonfinite=config.train.on_nonfinite_loss == 'stop'),
      evaluators={name: _evaluator(strategy, trained, splits[name],
                                   eval_batch=eval_batch)
                  for name in ('eval', 'test')},
      stop_vote=cluster.StopVote(strategy), checkpointer=checkpointer,
      counters=counters, board=board, progress=reporting.Progress(
          total_steps=config.train.epochs * steps_per_epoch,
          epochs=config.train.epochs, enabled=chief))


def resume(run: Run) -> TrainState:
  """Restores the latest checkpoint, if any, and starts the input there."""
  restored = run.checkpointer.restore_latest()
  step = int(run.counters.step.numpy())
  if restored:
    logging.info('Resuming from %s at step %d (%s).', restored, step,
                 f'epoch {step // run.steps_per_epoch + 1}'
                 if step < run.total_steps else 'trained: finishing')
    workers, replicas = (int(n) for n in run.counters.topology.numpy())
    saved = cluster.Topology(workers=workers, replicas=replicas)
    if saved != run.topology:
      # Safe: the examples of global batch k depend on (seed, k) only.
      logging.warning('The topology changed: the checkpoint was saved on %s, '
                      'this run has %s.', saved, run.topology)
  target = run.config.train.stop_at_accuracy
  reached = bool(target) and any(
      r['eval_accuracy'] >= target and r['step'] <= step
      for r in reporting.read_metrics(run.workdir))
  return TrainState(
      step=step, last_saved=step, first_step=step,
      writer=(reporting.MetricsWriter(run.workdir, resume_step=step)
              if run.chief else None),
      finished=reached or step >= run.total_steps,
      train_iterator=_distribute(
          run.strategy, input_pipeline.train_dataset, run.splits['train'],
          global_batch_size=run.config.train.global_batch_size,
          seed=run.config.seed, start_step=step,
          augment_config=run.config.data.augment))


def _learning_rate(run: Run) -> float:
  # The rate of the last step taken: the schedule counts applied updates.
  return float(run.schedule(
      max(int(run.trained.optimizer.iterations.numpy()) - 1, 0)))


def _finite(variables) -> bool:
  return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in variables
             if tf.as_dtype(v.dtype).is_floating)


def _save(run: Run, state: TrainState) -> None:
  """Checkpoints the state at state.step, if its weights are all finite.

  A step whose loss was finite can still leave non-finite weights (an update
  that overflowed): such a state is never saved, so the newest checkpoint
  is always one that can continue.
  """
  if not _finite(run.trained.model.variables):
    raise NonFiniteLossError(state.step, what='weights')
  run.counters.topology.assign([run.topology.workers, run.topology.replicas])
  run.checkpointer.save(state.step)
  state.last_saved = state.step


def _stop_if_asked(run: Run, state: TrainState, signals) -> None:
  """Checkpoints and stops if any worker was asked to; a collective."""
  if run.stop_vote(signals.requested is not None):
    if state.last_saved != state.step:
      _save(run, state)
    raise interrupts.Interrupted(signals.requested, state.step,
                                 chief=run.chief)


def train_loop(run: Run, state: TrainState, signals, *,
               num_steps: int) -> None:
  """One call of the compiled loop: num_steps steps, one line of output."""
  loop_start = time.time()
  totals = signals.call(run.train_loop, state.train_iterator,
                        tf.constant(num_steps)).numpy()
  loop_s = time.time() - loop_start
  state.step += int(totals.steps)
  if totals.nonfinite_steps and run.config.train.on_nonfinite_loss == 'stop':
    raise NonFiniteLossError(state.step)
  run.counters.step.assign(state.step)
  run.counters.epoch_totals.assign_add(totals)
  state.epoch_train_s += loop_s
  steps_per_s = (state.step - state.first_step) / (
      time.time() - state.loops_start)
  metrics = reporting.LoopMetrics(
      step=state.step, epoch=(state.step - 1) // run.steps_per_epoch + 1,
      loss=totals.mean_loss, accuracy=totals.accuracy,
      learning_rate=_learning_rate(run),
      examples_per_s=totals.count / loop_s,
      eta_s=(run.total_steps - state.step) / steps_per_s)
  run.board.write_train(metrics.step, **metrics.scalars())
  run.progress.loop(metrics)


def train_epoch(run: Run, state: TrainState, signals) -> None:
  """Trains to the end of the current epoch, checkpointing on the way."""
  epoch_end = (state.step // run.steps_per_epoch + 1) * run.steps_per_epoch
  state.epoch_train_s = 0.0
  while state.step < epoch_end:
    train_loop(run, state, signals, num_steps=min(
        run.settings.steps_per_loop, epoch_end - state.step))
    if state.step < epoch_end:  # The epoch's end is evaluated first.
      _stop_if_asked(run, state, signals)
      every = run.config.checkpoint.every_steps
      if state.step // every > state.last_saved // every:
        _save(run, state)


def evaluate(run: Run, state: TrainState, signals) -> dict:
  """The epoch's record: its training totals and an evaluation.

  Also decides whether the run is finished; if so and the run validates on
  a held-out split, the test set is evaluated, once.
  """
  evaluated = run.evaluators['eval'](signals)
  trained = steps.Totals(*run.counters.epoch_totals.numpy())
  record = {
      'step': state.step,
      'epoch': state.step // run.steps_per_epoch,
      'train_loss': trained.mean_loss,
      'train_accuracy': trained.accuracy,
      'eval_loss': evaluated.mean_loss,
      'eval_accuracy': evaluated.accuracy,
      'eval_examples': int(evaluated.count),
      'learning_rate': _learning_rate(run),
      'nonfinite_steps': int(trained.nonfinite_steps),
      'elapsed_s': round(time.time() - run.started, 3),
      'wall_time': round(time.time(), 3),
      'examples_per_s': round(trained.count / max(state.epoch_train_s, 1e-9),
                              1),
  }
  run.progress.message(
      f'eval epoch {record["epoch"]}: loss {record["eval_loss"]:.4f} accuracy '
      f'{record["eval_accuracy"]:.2%} on {record["eval_examples"]} examples')
  target = run.config.train.stop_at_accuracy
  if target and record['eval_accuracy'] >= target:
    logging.info('Reached train.stop_at_accuracy=%s: stopping.', target)
    state.finished = True
  state.finished |= state.step >= run.total_steps
  if state.finished and run.config.data.validation_split:
    # Chosen on the validation set; the test set is looked at once.
    tested = run.evaluators['test'](signals)
    record.update(test_loss=tested.mean_loss, test_accuracy=tested.accuracy,
                  test_examples=int(tested.count))
    run.progress.message(
        f'test: loss {record["test_loss"]:.4f} accuracy '
        f'{record["test_accuracy"]:.2%} on {record["test_examples"]} examples')
  return record


def _misclassified(model, split, *, count=8, among=1000):
  """A few test digits the model gets wrong, for TensorBoard (not on TPU)."""
  logits = model(split.images[:among], training=False)
  wrong = tf.argmax(logits, axis=-1).numpy() != split.labels[:among]
  return split.images[:among][wrong][:count]


def publish(run: Run, state: TrainState, record: dict) -> None:
  """An epoch's record to metrics.jsonl, the tuning service, TensorBoard."""
  state.records.append(record)
  if state.writer:
    state.writer.write(record)
    reporting.report_to_tuning_service(state.writer.records,
                                       metric='eval_accuracy')
  if run.board.enabled:
    with run.trained.evaluated_weights():
      run.board.write_eval(
          state.step, loss=record['eval_loss'],
          accuracy=record['eval_accuracy'],
          misclassified_images=None
          if strategy_lib.device_kind(run.strategy) == 'TPU'
          else _misclassified(run.trained.model, run.splits['eval']))


def end_epoch(run: Run, state: TrainState, signals) -> None:
  """Starts the next epoch's totals, checkpoints, and stops if asked."""
  run.counters.epoch_totals.assign(
      tf.zeros_like(run.counters.epoch_totals))
  _save(run, state)
  if not state.finished:
    _stop_if_asked(run, state, signals)


def _export(run: Run) -> None:
  """Every worker exports, as with checkpoints; only the chief's is kept.

  The chief's goes to a temporary folder first, renamed into place when
  complete, so WORKDIR/export is never half-written.
  """
  if not run.chief:
    directory = tempfile.mkdtemp()
    export.export_saved_model(run.trained.model, directory)
    tf.io.gfile.rmtree(directory)
    return
  final = workdir_lib.path(run.workdir, workdir_lib.EXPORT)
  staging = workdir_lib.temporary_name(final)
  export.export_saved_model(run.trained.model, staging)
  if tf.io.gfile.exists(final):
    tf.io.gfile.rmtree(final)
  tf.io.gfile.rename(staging, final)
  logging.info('Exported the model to %s', final)


def _write_tflite(run: Run, state: TrainState) -> None:
  """The LiteRT models outputs.litert and litert_int8 ask for, if new or
  missing. One that fails its check on the test set is not written: the
  SavedModel is there, the run has succeeded, and a warning says why."""
  asked = {'none': run.config.outputs.litert,
           'int8': run.config.outputs.litert_int8}
  for quantize in (q for q, wanted in asked.items() if wanted):
    if state.records or not tf.io.gfile.exists(
        litert.tflite_path(run.workdir, quantize=quantize)):
      try:
        logging.info('Wrote %s', litert.write_tflite(run.workdir,
                                                    quantize=quantize))
      except ValueError as e:
        logging.warning('%s', e)


def finish(run: Run, state: TrainState) -> None:
  """Closes the summaries, then exports and plots what is new or missing.

  Idempotent: a run whose training is complete but whose export or plots are
  missing (a stop during them) makes them at its next start, untrained.
  """
  run.board.close()
  if run.trained.average:
    run.trained.average.keep()  # From here on the model is the evaluated one.
  # Every worker decides alike (the export is collective): from the chief's
  # workdir, which all of them read.
  if run.config.outputs.saved_model and (
      state.records or not tf.io.gfile.exists(
          workdir_lib.path(run.workdir, workdir_lib.EXPORT))):
    _export(run)
  if run.chief:
    _write_tflite(run, state)
  if run.chief and run.config.outputs.plots and (
      state.records or plots.missing(run.workdir)):
    written = plots.make_all(run.workdir)
    logging.info('Wrote %d plots to %s', len(written),
                 workdir_lib.path(run.workdir, workdir_lib.PLOTS))
