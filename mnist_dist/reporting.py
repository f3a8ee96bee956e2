"""What a run tells its user on the console: a log line per loop, or a
progress bar. (What it writes to files are actions: `outputs`.)"""

import contextlib
import dataclasses
import logging as py_logging
import os
import sys
from typing import TextIO

from absl import logging
import tqdm
from tqdm import contrib as tqdm_contrib


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


@dataclasses.dataclass(frozen=True)
class LoopMetrics:
  """One training loop's numbers, computed once for the log and TensorBoard."""
  step: int  # The global step after the loop.
  epoch: int  # The epoch the loop trained in, from 1.
  loss: float  # Mean per-example loss over the loop.
  accuracy: float
  learning_rate: float  # Of the loop's last step.
  examples_per_s: float
  eta_s: float  # Until the last step, at this process's mean speed so far.

  def scalars(self) -> dict[str, float]:
    """What TensorBoard plots of each loop."""
    return {'loss': self.loss, 'accuracy': self.accuracy,
            'learning_rate': self.learning_rate,
            'examples_per_s': self.examples_per_s}


def loop_line(metrics: LoopMetrics, *, total_steps: int, epochs: int) -> str:
  """One concise, greppable line per training loop."""
  return (f'step {metrics.step}/{total_steps} epoch {metrics.epoch}/{epochs} | '
          f'loss {metrics.loss:.4f} accuracy {metrics.accuracy:.2%} | '
          f'lr {metrics.learning_rate:.3g} | '
          f'{metrics.examples_per_s:,.0f} examples/s | '
          f'ETA {format_duration(metrics.eta_s)}')


def bar_fields(metrics: LoopMetrics) -> str:
  """The numbers the progress bar shows after its step count."""
  return (f'loss {metrics.loss:.4f}, acc {metrics.accuracy:.2%}, '
          f'{metrics.examples_per_s:,.0f} ex/s, '
          f'ETA {format_duration(metrics.eta_s)}')


def _stream_handlers() -> list[py_logging.StreamHandler]:
  """Every logging handler that writes to a stream, absl's among them."""
  loggers = [py_logging.root, *(
      logger for logger in py_logging.root.manager.loggerDict.values()
      if isinstance(logger, py_logging.Logger))]
  handlers = [logging.get_absl_handler().python_handler]  # Inside absl's.
  handlers += [handler for logger in loggers for handler in logger.handlers
               if isinstance(handler, py_logging.StreamHandler)]
  return list(dict.fromkeys(handlers))


@contextlib.contextmanager
def _lines_above_the_bar(stream: TextIO):
  """What logging and sys.stderr write to `stream` goes through tqdm.write,
  which clears the bar, writes the line and draws the bar again below it."""
  above = tqdm_contrib.DummyTqdmFile(stream)
  handlers = [handler for handler in _stream_handlers()
              if handler.stream is stream]
  stderr = sys.stderr
  for handler in handlers:
    handler.setStream(above)
  if stderr is stream:
    sys.stderr = above
  try:
    yield
  finally:
    if sys.stderr is above:
      sys.stderr = stderr
    for handler in handlers:
      if handler.stream is above:
        handler.setStream(stream)


def _can_show_a_bar(stream: TextIO) -> bool:
  """A TTY, but not one of size 0x0 (a pseudo-terminal opened without a
  size, as by `script`), where tqdm draws nothing."""
  if not (hasattr(stream, 'isatty') and stream.isatty()):
    return False
  try:
    size = os.get_terminal_size(stream.fileno())
  except (AttributeError, OSError, ValueError):
    return True  # Not a file: tqdm draws at its default width.
  return size.columns > 0 and size.lines > 0


class Progress:
  """Where a run shows its progress.

  On a terminal (the stream, stderr by default, is a TTY): one progress bar
  for the run, with the last loop's loss, accuracy, speed and ETA; while it
  shows, every other line (messages, logging, warnings) is written above it.
  Elsewhere (a log file, a pipe): a `loop_line` per loop, through logging.
  One object per run; disabled on the workers that are not the chief.
  """

  def __init__(self, *, total_steps: int, epochs: int, enabled: bool,
               stream: TextIO | None = None):
    self._total_steps = total_steps
    self._epochs = epochs
    self._enabled = enabled
    self._stream = sys.stderr if stream is None else stream
    self._use_bar = enabled and _can_show_a_bar(self._stream)
    self._bar = None
    self._shown = contextlib.ExitStack()  # Closes the bar, if one shows.

  def loop(self, metrics: LoopMetrics) -> None:
    """After each training loop."""
    if not self._enabled:
      return
    if not self._use_bar:
      logging.info(loop_line(metrics, total_steps=self._total_steps,
                             epochs=self._epochs))
      return
    # At the step, not counted up from 0: a resumed run starts where it was.
    epoch = f'epoch {metrics.epoch}/{self._epochs}'
    if self._bar is None:
      self._shown.enter_context(_lines_above_the_bar(self._stream))
      self._bar = self._shown.enter_context(tqdm.tqdm(
          total=self._total_steps, initial=metrics.step, desc=epoch,
          postfix=bar_fields(metrics), file=self._stream, dynamic_ncols=True,
          bar_format='{desc} {percentage:3.0f}%|{bar}| '
                     '{n_fmt}/{total_fmt}{postfix}'))
    else:
      self._bar.n = metrics.step
      self._bar.set_description_str(epoch, refresh=False)
      self._bar.set_postfix_str(bar_fields(metrics))  # Draws the bar.

  def message(self, text: str) -> None:
    """Any other line of the run's story (evaluations, checkpoints)."""
    if self._enabled:
      logging.info('%s', text)

  def close(self) -> None:
    """At the end of the run, or when it stops."""
    self._shown.close()
    self._bar = None
