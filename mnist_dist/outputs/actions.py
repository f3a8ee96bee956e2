"""Actions: what a run does with its results, outside the training loop.

As in orbit's Controller, the controller knows no output by name: it calls
each action of a list at fixed points of the run, and every output
(metrics.jsonl, TensorBoard, the export, LiteRT, the plots, a profile) is an
action in its own module, built from the config by `outputs.from_config`.
An action of your own joins them without any change to the controller:

  class CsvFile(actions.Action):
    def record(self, context, record):
      ...

  train.train_and_evaluate(config, workdir, actions=[CsvFile()])

A plain function is an action too: `fn(record)` is called with each
evaluation's record (docs/design.md shows a whole example).

The hooks, in the order a run calls them (each a no-op in `Action`):

  start(context, step=)             after the checkpoint is restored: the
                                    step this process starts from
  loop_start(context, step=, num_steps=)   before each call of the compiled
                                    training loop, which runs num_steps
  loop_end(context, step=, scalars=)       after it: {name: value} of the
                                    loop (loss, accuracy, learning_rate,
                                    examples_per_s), step the one it reached
  record(context, record)           after each evaluation: the record that
                                    metrics.jsonl holds (README, fields)
  finish(context, trained=)         once, when training is complete; trained
                                    is False when this process trained
                                    nothing (a finished run started again),
                                    so an action makes only what is missing

Only the chief runs an action, unless it sets `every_worker`: an action
that calls a collective (the SavedModel export runs the model under the
strategy) must run on every worker, at the same points. A stop (a signal, a
lost worker, a NaN) skips `finish`; the next start calls it.
"""

import contextlib
import dataclasses
from typing import Callable, ContextManager

import keras
import ml_collections


@dataclasses.dataclass(frozen=True)
class Context:
  """What an action may read of its run; it changes none of it."""
  config: ml_collections.ConfigDict
  workdir: str
  chief: bool  # The one worker that writes files.
  device_kind: str  # 'CPU', 'GPU' or 'TPU'.
  model: keras.Model
  splits: dict  # 'train', 'eval' and 'test': input_pipeline.Split.
  # A context in which `model` holds the weights evaluations and the export
  # see (the weight average, with train.ema_decay).
  evaluated_weights: Callable[[], ContextManager] = contextlib.nullcontext


class Action:
  """An output of a run: override the hooks it needs."""

  every_worker = False  # True: also on the workers that are not the chief.

  def start(self, context: Context, *, step: int) -> None:
    """Before training, once this process knows where it starts."""

  def loop_start(self, context: Context, *, step: int,
                 num_steps: int) -> None:
    """Before a call of the training loop that runs steps step+1.."""

  def loop_end(self, context: Context, *, step: int,
               scalars: dict[str, float]) -> None:
    """After a call of the training loop, which reached `step`."""

  def record(self, context: Context, record: dict) -> None:
    """After each evaluation, with its metrics.jsonl record."""

  def finish(self, context: Context, *, trained: bool) -> None:
    """Once, after the last evaluation (or at a start with nothing left)."""


class _OnRecord(Action):
  """A plain function, called with each evaluation's record."""

  def __init__(self, fn: Callable[[dict], None]):
    self._fn = fn

  def record(self, context, record):
    del context
    self._fn(record)


def as_action(action: Action | Callable[[dict], None]) -> Action:
  """An Action as it is; a plain function as an action on each record."""
  if isinstance(action, Action):
    return action
  if callable(action):
    return _OnRecord(action)
  raise TypeError(f'{action!r} is neither an actions.Action nor a function '
                  'of a record')
