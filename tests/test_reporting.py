"""What a run reports on the console: its progress, as lines or a bar."""

import io
import logging

from absl import logging as absl_logging
import pytest

from mnist_dist import reporting


class _Terminal(io.StringIO):
  """A stream that says it is a TTY, of no size tqdm can read."""

  def isatty(self):
    return True


def _screen(output: str) -> list[str]:
  """The lines a terminal shows after `output`: \r returns to column 0 and
  what follows overwrites."""
  lines, column = [''], 0
  for char in output:
    if char == '\r':
      column = 0
    elif char == '\n':
      lines.append('')
      column = 0
    else:
      line = lines[-1]
      lines[-1] = line[:column] + char + line[column + 1:]
      column += 1
  return [line.rstrip() for line in lines if line.strip()]


def _metrics(step, epoch=1, loss=2.3055, accuracy=0.1037):
  return reporting.LoopMetrics(
      step=step, epoch=epoch, loss=loss, accuracy=accuracy,
      learning_rate=0.001, examples_per_s=30849.2, eta_s=61)


@pytest.fixture
def absl_to(caplog):
  """absl logging.info to a stream, as absl's handler sends it to stderr."""
  caplog.set_level(logging.INFO)
  handlers = []

  def to(stream):
    handler = logging.StreamHandler(stream)
    absl_logging.get_absl_logger().addHandler(handler)
    handlers.append(handler)
    return handler
  yield to
  for handler in handlers:
    absl_logging.get_absl_logger().removeHandler(handler)


def test_a_terminal_gets_a_bar_with_the_lines_above_it(absl_to):
  terminal = _Terminal()
  handler = absl_to(terminal)
  progress = reporting.Progress(total_steps=468, epochs=2, enabled=True,
                                stream=terminal)
  progress.loop(_metrics(300))  # The first loop of a resumed run.
  assert _screen(terminal.getvalue())[-1].startswith('epoch 1/2  64%|')
  progress.message('eval epoch 1: loss 2.3033 accuracy 9.90% on 10000 '
                   'examples')
  absl_logging.info('Saved checkpoint ckpt-468')
  progress.loop(_metrics(400, epoch=2, loss=2.3045, accuracy=0.1023))
  progress.close()

  # Each line stands whole above the bar, which ends at the last loop.
  *lines, bar = _screen(terminal.getvalue())
  assert lines == ['eval epoch 1: loss 2.3033 accuracy 9.90% on 10000 examples',
                   'Saved checkpoint ckpt-468']
  assert bar.startswith('epoch 2/2  85%|')
  assert bar.endswith('| 400/468, loss 2.3045, acc 10.23%, 30,849 ex/s, '
                      'ETA 1m01s')
  assert 'examples/s' not in terminal.getvalue()  # No loop lines.
  assert handler.stream is terminal  # Logging writes there directly again.


def test_a_file_or_pipe_gets_a_line_per_loop(absl_to, caplog):
  log = io.StringIO()
  absl_to(log)
  progress = reporting.Progress(total_steps=468, epochs=2, enabled=True,
                                stream=log)
  progress.loop(_metrics(300))
  progress.close()
  assert log.getvalue() == (
      'step 300/468 epoch 1/2 | loss 2.3055 accuracy 10.37% | lr 0.001 | '
      '30,849 examples/s | ETA 1m01s\n')


def test_a_disabled_progress_shows_nothing(absl_to):
  terminal = _Terminal()
  absl_to(terminal)
  progress = reporting.Progress(total_steps=468, epochs=2, enabled=False,
                                stream=terminal)
  progress.loop(_metrics(300))
  progress.message('eval epoch 1')
  progress.close()
  assert not terminal.getvalue()
