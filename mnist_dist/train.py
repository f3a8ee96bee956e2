"""The controller: builds a run, then alternates training epochs and evals.

`train_and_evaluate` reads as a run goes:

  validate(config)                       once, before anything is built
  strategy = create_strategy(...)        once, joining the cluster if any
  run = build_run(config, workdir, strategy=strategy, chief=is_chief(...))
                                         data, model, loops, actions
  state = resume(run)                    from the latest checkpoint, if any
  while not state.finished:
    train_epoch(run, state, signals)     compiled loops of many steps each
    record = evaluate(run, state, signals)
    publish(run, state, record)          the record to every action
    end_epoch(run, state, signals)       checkpoint; stop if any worker asked
  finish(run, state)                     the actions' last outputs

`Run` is what is built once; `TrainState` is what changes. Every worker of a
cluster runs the same steps in the same order, since each loop, evaluation,
checkpoint and stop vote is a collective; only the chief writes files.

What a run leaves besides checkpoints (metrics.jsonl, TensorBoard, the
export, ...) is made by actions (`mnist_dist.outputs.actions`): this module
calls them at fixed points and knows none of them by name.
"""

import contextlib
import dataclasses
import time
from typing import Callable, Sequence

from absl import logging
import keras
import ml_collections
import tensorflow as tf

from mnist_dist import checkpoints
from mnist_dist import config as config_lib
from mnist_dist import reporting
from mnist_dist import steps
from mnist_dist import trainable
from mnist_dist.base import errors
from mnist_dist.base import stops
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.data import input_pipeline
from mnist_dist.distribution import cluster
from mnist_dist.distribution import environment
from mnist_dist.distribution import interrupts
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.modeling import optimizers
from mnist_dist.outputs import actions as actions_lib
from mnist_dist.outputs import from_config as outputs


@dataclasses.dataclass
class TrainResult:
  model: keras.Model
  metrics: list[dict]  # One record per evaluation of this process.


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
  learner: trainable.Learner
  schedule: Callable[[int], float]  # Learning rate of the update of index n.
  train_loop: Callable[..., steps.Totals]
  evaluators: dict[str, Callable[[interrupts.SignalWatch], steps.Totals]]
  stop_vote: cluster.StopVote
  checkpointer: checkpoints.Checkpointer
  counters: trainable.Counters
  progress: reporting.Progress
  context: actions_lib.Context  # What the actions see of the run.
  actions: list[actions_lib.Action]  # Those this worker runs, in order.


@dataclasses.dataclass
class TrainState:
  """What changes as the run goes."""
  step: int
  last_saved: int  # The step of the newest checkpoint.
  finished: bool  # All epochs trained, or train.stop_at_accuracy reached.
  train_iterator: object  # The distributed input, from `step` on.
  first_step: int  # The step this process started from, for speed and ETA.
  records: list[dict] = dataclasses.field(default_factory=list)
  epoch_train_s: float = 0.0  # Time in training loops, this epoch.
  loops_start: float = dataclasses.field(default_factory=time.time)


def train_and_evaluate(
    config, workdir: str, *,
    actions: Sequence[actions_lib.Action | Callable[[dict], None]] = ()
) -> TrainResult:
  """Trains config's model for config.train.epochs, resuming if it can.

  Args:
    config: a config of `mnist_dist.config` (see configs/).
    workdir: where the run keeps its files (`mnist_dist.base.workdir`; local or
      gs://). Starting again with the same workdir resumes.
    actions: outputs of the caller's, run after those config.outputs asks
      for (`mnist_dist.outputs.actions`): Action objects, or functions of a
      record.

  Returns:
    The trained model (with train.ema_decay, its averaged weights) and the
    evaluation records of this process.

  Raises:
    errors.ConfigError, DataError, WorkdirError, CheckpointError: before
      training, for input that cannot run, or a workdir that cannot be used.
    errors.NonFiniteError: the loss or the weights became NaN or infinite.
    errors.Interrupted: SIGTERM or SIGINT to this or another worker; a
      checkpoint was saved.
    errors.TransientError: the workdir's storage failed for now.
    errors.WorkerLost: another worker of the cluster is gone.
  """
  config_lib.validate(config)
  # A Slurm step's or a JobSet pod's cluster, where TensorFlow reads it.
  environment.describe_cluster_in_tf_config()
  workdir_lib.check_usable(workdir)
  checkpoint_dir = workdir_lib.path(workdir, workdir_lib.CHECKPOINTS)
  # Around all of it: a lost peer, a storage failure, or a signal outside
  # the training loops, is one line wherever it strikes.
  with (interrupts.stops_outside_loops() as stage,
        cluster.peer_failures(config.distribution,
                              checkpoint_dir=checkpoint_dir) as where,
        # Inside: this worker's own storage error is not a lost peer.
        workdir_lib.storage_failures(workdir)):
    with cluster.joining(config.distribution, checkpoint_dir=checkpoint_dir):
      strategy = strategy_lib.create_strategy(config.distribution)
    where.formed = True
    chief = cluster.is_chief(strategy)
    with workdir_lib.Lock(workdir, enabled=chief) as lock:
      run = build_run(config, workdir, strategy=strategy, chief=chief,
                      actions=actions)
      state = resume(run)
      where.step_of = lambda: state.step
      train_epochs(run, state, lock)
      stage.finishing_at = state.step
      cluster.report_phase('finishing')
      finish(run, state)
  return TrainResult(model=run.learner.model, metrics=state.records)


def train_epochs(run: Run, state: TrainState, lock: workdir_lib.Lock) -> None:
  """The epochs, from state.step until state.finished, or a stop."""
  cluster.report_phase('training')
  stops.check_stop()  # A stop swallowed while starting.
  with (contextlib.closing(run.progress),
        interrupts.SignalWatch(failure=lock.lost) as signals,
        # Last: leaving it waits for a checkpoint still being written,
        # before a stop says it is saved or a loss names the newest.
        run.checkpointer):
    while not state.finished:
      train_epoch(run, state, signals)
      record = evaluate(run, state, signals)
      publish(run, state, record)
      end_epoch(run, state, signals)
  if signals.requested:  # After the last vote: all is saved all the same.
    raise errors.Interrupted(signals.requested, state.step, chief=run.chief,
                             trained=True)


def _actions(config, *, chief: bool, added) -> list[actions_lib.Action]:
  """config.outputs' actions, then the caller's: those this worker runs."""
  chosen = [*outputs.from_config(
      config.outputs, profile_steps=config_lib.profile_steps(config.outputs)),
            *map(actions_lib.as_action, added)]
  return [action for action in chosen if chief or action.every_worker]


def build_run(config, workdir: str, *, strategy: tf.distribute.Strategy,
              chief: bool, actions=()) -> Run:
  """Builds everything a run needs, in order, on the caller's strategy.

  config: checked by `config.validate`. strategy: the run's, created once
  (`strategy.create_strategy`); chief: `cluster.is_chief(strategy)`.
  actions: as train_and_evaluate's.
  """
  started = time.time()
  if not chief:
    logging.set_verbosity(logging.WARNING)  # The chief's log tells the story.
  keras.utils.set_random_seed(config.seed)
  splits = input_pipeline.splits(config.data, seed=config.seed)
  topology = cluster.topology(strategy)
  steps_per_epoch = len(splits['train']) // config.train.global_batch_size
  total_steps = config.train.epochs * steps_per_epoch
  config_lib.check_against_run(config, num_replicas=topology.replicas,
                               steps_per_epoch=steps_per_epoch)
  kind = strategy_lib.device_kind(strategy)
  settings = strategy_lib.device_settings(
      config.train, device_kind=kind, steps_per_epoch=steps_per_epoch)
  workdir_lib.check_and_record_config(config, workdir, write=False)
  learner = trainable.build_model(config, strategy=strategy,
                                  settings=settings,
                                  steps_per_epoch=steps_per_epoch)
  counters = trainable.Counters()
  logging.info('%s: %s on %s, global batch %d, %d steps per epoch in loops '
               'of %d, XLA %s, precision %s', config.model.name, topology,
               kind, config.train.global_batch_size, steps_per_epoch,
               settings.steps_per_loop,
               'on' if settings.jit_compile else 'off', settings.precision)
  return Run(
      config=config, workdir=workdir, started=started, strategy=strategy,
      chief=chief, topology=topology, settings=settings, splits=splits,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      learner=learner, schedule=optimizers.learning_rate_schedule(
          config.optimizer, steps_per_epoch=steps_per_epoch,
          epochs=config.train.epochs),
      train_loop=trainable.make_train_loop(
          config, strategy=strategy, learner=learner, settings=settings),
      evaluators=trainable.make_evaluators(
          config, strategy=strategy, learner=learner, splits=splits,
          replicas=topology.replicas),
      stop_vote=cluster.StopVote(strategy),
      checkpointer=trainable.checkpointer(
          config, workdir, chief=chief, learner=learner, settings=settings,
          counters=counters),
      counters=counters, progress=reporting.Progress(
          total_steps=total_steps, epochs=config.train.epochs, enabled=chief),
      context=actions_lib.Context(
          config=config, workdir=workdir, chief=chief, device_kind=kind,
          model=learner.model, splits=splits,
          evaluated_weights=learner.evaluated_weights),
      actions=_actions(config, chief=chief, added=actions))


def _each(run: Run, hook: str, *args, **kwargs) -> None:
  """Calls hook of every action of this worker, in order."""
  for action in run.actions:
    stops.check_stop()  # Outside the loops, a signal's stop is due here.
    getattr(action, hook)(run.context, *args, **kwargs)


def resume(run: Run) -> TrainState:
  """Restores the latest checkpoint, if any, and starts the input there."""
  restored = run.checkpointer.restore_latest()
  step = int(run.counters.step.numpy())
  # Refusals first: config.json, below, is the start's first write.
  cluster.check_restored(run.strategy, step=step,
                         saved_on=run.counters.topology if restored else None,
                         checkpoints=run.checkpointer.directory)
  workdir_lib.check_and_record_config(run.config, run.workdir, write=run.chief)
  if restored:
    logging.info('Resuming from %s at step %d (%s).', restored, step,
                 f'epoch {step // run.steps_per_epoch + 1}'
                 if step < run.total_steps else 'trained: finishing')
  target = run.config.train.stop_at_accuracy
  reached = bool(target) and float(run.counters.eval_accuracy) >= target
  _each(run, 'start', step=step)
  return TrainState(
      step=step, last_saved=step, first_step=step,
      finished=reached or step >= run.total_steps,
      train_iterator=input_pipeline.distributed_iterator(
          run.strategy, input_pipeline.train_dataset, split=run.splits['train'],
          global_batch_size=run.config.train.global_batch_size,
          seed=run.config.seed, start_step=step,
          augment_config=run.config.data.augment))


def _learning_rate(run: Run) -> float:
  # The rate of the last step taken: the schedule counts applied updates.
  return float(run.schedule(
      max(int(run.learner.optimizer.iterations.numpy()) - 1, 0)))


def _save(run: Run, state: TrainState) -> None:
  """Checkpoints the state at state.step, if its weights are all finite.

  A step whose loss was finite can still leave non-finite weights (an update
  that overflowed): such a state is never saved, so the newest checkpoint
  is always one that can continue.
  """
  if not run.learner.finite():
    raise errors.NonFiniteError(state.step, what='weights')
  run.counters.topology.assign([run.topology.workers, run.topology.replicas])
  run.checkpointer.save(state.step)
  state.last_saved = state.step


def _stop_if_asked(run: Run, state: TrainState, signals) -> None:
  """Checkpoints and stops if any worker was asked to, or the chief lost the
  workdir's lock; a collective. At the end of training too: the outputs,
  seconds of work, are made at the next start."""
  if run.stop_vote(signals.stopping):
    if state.last_saved != state.step:
      _save(run, state)
    raise signals.failure() or errors.Interrupted(
        signals.requested, state.step, chief=run.chief,
        trained=state.finished)


def call_train_loop(run: Run, state: TrainState, signals, *,
                    num_steps: int) -> None:
  """One call of the compiled loop: num_steps steps, one line of output."""
  _each(run, 'loop_start', step=state.step, num_steps=num_steps)
  call_start = time.time()
  totals = signals.call(run.train_loop, state.train_iterator,
                        tf.constant(num_steps)).numpy()
  call_s = time.time() - call_start
  state.step += int(totals.steps)
  if totals.nonfinite_steps and run.config.train.on_nonfinite_loss == 'stop':
    raise errors.NonFiniteError(state.step)
  run.counters.step.assign(state.step)
  for name, variable in run.counters.epoch_totals.items():
    variable.assign_add(getattr(totals, name))
  state.epoch_train_s += call_s
  steps_per_s = (state.step - state.first_step) / (
      time.time() - state.loops_start)
  loop_metrics = reporting.LoopMetrics(
      step=state.step, epoch=(state.step - 1) // run.steps_per_epoch + 1,
      loss=totals.mean_loss, accuracy=totals.accuracy,
      learning_rate=_learning_rate(run),
      examples_per_s=totals.count / call_s,
      eta_s=(run.total_steps - state.step) / steps_per_s)
  _each(run, 'loop_end', step=state.step, scalars=loop_metrics.scalars())
  run.progress.loop(loop_metrics)


def train_epoch(run: Run, state: TrainState, signals) -> None:
  """Trains to the end of the current epoch, checkpointing on the way."""
  epoch_end = (state.step // run.steps_per_epoch + 1) * run.steps_per_epoch
  state.epoch_train_s = 0.0
  while state.step < epoch_end:
    call_train_loop(run, state, signals, num_steps=min(
        run.settings.steps_per_loop, epoch_end - state.step))
    if state.step < epoch_end:  # The epoch's end is evaluated first.
      _stop_if_asked(run, state, signals)
      every_steps = run.config.checkpoint.every_steps
      if state.step // every_steps > state.last_saved // every_steps:
        _save(run, state)


def _test(run: Run, record: dict, signals) -> None:
  """The test set, looked at once, at the end of a run chosen on a
  validation split."""
  tested = run.evaluators['test'](signals)
  record.update(test_loss=tested.mean_loss, test_accuracy=tested.accuracy,
                test_examples=int(tested.count))
  run.progress.message(
      f'test: loss {record["test_loss"]:.4f} accuracy '
      f'{record["test_accuracy"]:.2%} on {record["test_examples"]} examples')


def evaluate(run: Run, state: TrainState, signals) -> dict:
  """The epoch's record: its training totals and an evaluation.

  Also decides whether the run is finished; if so and the run validates on
  a held-out split, the test set is evaluated, once.
  """
  evaluated = run.evaluators['eval'](signals)
  epoch_totals = run.counters.epoch()
  record = {
      'step': state.step,
      'epoch': state.step // run.steps_per_epoch,
      'train_loss': epoch_totals.mean_loss,
      'train_accuracy': epoch_totals.accuracy,
      'eval_loss': evaluated.mean_loss,
      'eval_accuracy': evaluated.accuracy,
      'eval_examples': int(evaluated.count),
      'learning_rate': _learning_rate(run),
      'nonfinite_steps': int(epoch_totals.nonfinite_steps),
      'elapsed_s': round(time.time() - run.started, 3),
      'wall_time': round(time.time(), 3),
      'examples_per_s': round(
          epoch_totals.count / max(state.epoch_train_s, 1e-9), 1),
  }
  run.counters.eval_accuracy.assign(evaluated.accuracy)
  run.progress.message(
      f'eval epoch {record["epoch"]}: loss {record["eval_loss"]:.4f} accuracy '
      f'{record["eval_accuracy"]:.2%} on {record["eval_examples"]} examples')
  target = run.config.train.stop_at_accuracy
  if target and record['eval_accuracy'] >= target:
    logging.info('Reached train.stop_at_accuracy=%s: stopping.', target)
    state.finished = True
  state.finished |= state.step >= run.total_steps
  if state.finished and run.config.data.validation_split:
    _test(run, record, signals)
  return record


def publish(run: Run, state: TrainState, record: dict) -> None:
  """An epoch's record to every action (metrics.jsonl, TensorBoard, ...)."""
  state.records.append(record)
  _each(run, 'record', record)


def end_epoch(run: Run, state: TrainState, signals) -> None:
  """Starts the next epoch's totals, checkpoints, and stops if asked."""
  for variable in run.counters.epoch_totals.values():
    variable.assign(0.0)
  _save(run, state)
  _stop_if_asked(run, state, signals)


def finish(run: Run, state: TrainState) -> None:
  """The actions' finish: the export, the plots, ... what is new or missing.

  Idempotent: a run whose training is complete but whose outputs are
  missing (a stop while they were made) makes them at its next start,
  untrained (`trained=False`).
  """
  if run.learner.average:
    run.learner.average.keep()  # From here on the model is the evaluated one.
  _each(run, 'finish', trained=bool(state.records))
