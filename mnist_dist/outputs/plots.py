r"""Pictures of a run, as PNGs in WORKDIR/plots/, made without retraining.

  mnist-dist-plots WORKDIR
  python -m mnist_dist.plots WORKDIR

reads WORKDIR/metrics.jsonl, config.json and export/ and writes:

  training_curves.png   loss and accuracy, train vs test, epoch by epoch
  learning_rate.png     the schedule the optimizer followed, step by step
  predictions.png       the first test digits, each with the predicted class
  worst_mistakes.png    the wrong predictions the model was surest of
  confusion_matrix.png  true class against predicted class on the test set

The last three run the exported model on the test split of the run's own
config, and are skipped when there is no export. matplotlib draws off-screen
(its Agg renderer, through the object-oriented API rather than pyplot): no
display needed, and no global state changed in a process that calls this.
`Plots` is the action that makes them at the end of a run (`outputs.plots`).
"""

import argparse
import io
import math
import os

from absl import logging
from absl.flags import argparse_flags
import matplotlib.collections
import matplotlib.colors
import matplotlib.patches
from matplotlib.figure import Figure
import ml_collections
import numpy as np
import tensorflow as tf

from mnist_dist.base import cli
from mnist_dist.base import errors
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.data import idx
from mnist_dist.data import input_pipeline
from mnist_dist.modeling import optimizers
from mnist_dist.outputs import actions
from mnist_dist.outputs import export
from mnist_dist.outputs import metrics_file

DPI = 100
# Each figure's margins, fixed: matplotlib's constrained layout finds about
# the same ones, at a third of a second a figure, at the end of every run.
_MARGINS = {'left': 0.07, 'right': 0.98, 'bottom': 0.12, 'top': 0.86}
WRONG = 'tab:red'
TRAIN, TEST = 'tab:blue', 'tab:orange'


def _save(figure: Figure, path: str) -> None:
  # Through a buffer, so that the path may be on gs:// too; whole or not at
  # all, so that `missing` can trust what it finds.
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png')
  workdir_lib.write_atomically(path, buffer.getvalue())


def plot_training_curves(records: list[dict], path: str, *,
                         dpi: int = DPI) -> None:
  """The codelab's two panels: loss and accuracy per epoch, train and test.

  Train values are means over each epoch, in training mode (dropout on);
  test values are measured on the whole test set at each epoch's end.
  """
  epochs = [r['epoch'] for r in records]
  figure = Figure(figsize=(10, 4), dpi=dpi)
  loss, accuracy = figure.subplots(1, 2)
  figure.subplots_adjust(**_MARGINS, wspace=0.2)
  for key, label, color in (('train', 'train (epoch mean)', TRAIN),
                            ('eval', 'test', TEST)):
    loss.plot(epochs, [r[f'{key}_loss'] for r in records], 'o-', color=color,
              label=label)
    accuracy.plot(epochs, [100 * r[f'{key}_accuracy'] for r in records], 'o-',
                  color=color, label=label)
  loss.set(title='loss', xlabel='epoch', ylabel='cross-entropy')
  accuracy.set(title='accuracy', xlabel='epoch', ylabel='%')
  for axes in (loss, accuracy):
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend()
  figure.suptitle(f'test accuracy {records[-1]["eval_accuracy"]:.2%} after '
                  f'epoch {records[-1]["epoch"]}')
  _save(figure, path)


def plot_learning_rate(config: ml_collections.ConfigDict, records: list[dict],
                       path: str, *, dpi: int = DPI) -> None:
  """The schedule of config.optimizer at every step of the planned epochs.

  Recomputed with the trainer's own `optimizers.learning_rate_schedule`; the
  values metrics.jsonl recorded (each epoch's last step) are marked on it,
  so a schedule that was not followed would show.
  """
  # Every record is written at an epoch's end: step = epoch * steps_per_epoch.
  steps_per_epoch = records[-1]['step'] // records[-1]['epoch']
  schedule = optimizers.learning_rate_schedule(
      config.optimizer, steps_per_epoch=steps_per_epoch,
      epochs=config.train.epochs)
  # A hundred steps, and the warm-up's last, draw the curve: Keras' cosine
  # takes one step at a time, a millisecond each.
  total = config.train.epochs * steps_per_epoch
  warmup_end = round(config.optimizer.warmup_epochs * steps_per_epoch)
  steps = np.unique(np.append(np.linspace(0, total - 1, 100).astype(int),
                              min(warmup_end, total - 1)))
  figure = Figure(figsize=(7, 4), dpi=dpi)
  axes = figure.subplots()
  figure.subplots_adjust(**{**_MARGINS, 'left': 0.12})
  axes.plot(steps / steps_per_epoch, [float(schedule(s)) for s in steps],
            color=TRAIN, label='schedule, per step')
  recorded = np.array([r['step'] - 1 for r in records])
  axes.plot(recorded / steps_per_epoch, [r['learning_rate'] for r in records],
            'o', color=TEST, label="metrics.jsonl (each epoch's last step)")
  lr = config.optimizer.learning_rate
  if config.optimizer.schedule == 'cosine':
    # Linear: the warm-up starts at 0, which a log scale cannot show.
    axes.set(title=f'{config.optimizer.name}: warm-up to {lr:g} over '
             f'{config.optimizer.warmup_epochs:g} epochs, then cosine to 0')
  else:
    kind = 'per epoch' if config.optimizer.staircase else 'per step'
    axes.set(yscale='log', title=f'{config.optimizer.name}: {lr:g} * '
             f'{config.optimizer.decay_rate:g}^epoch, decayed {kind}')
  axes.set(xlabel='epoch', ylabel='learning rate')
  axes.yaxis.set_major_formatter('{x:.3g}')  # 0.005, not 5x10^-3.
  axes.yaxis.set_minor_formatter('{x:.3g}')
  axes.grid(alpha=0.3, which='both')
  axes.legend()
  _save(figure, path)


# The digit grid's layout, in pixels of the digits: each cell a 28x28 digit
# with a margin around it, then a line of caption for each line it has.
_MARGIN, _CAPTION_LINE = 3, 8


def plot_digit_grid(images: np.ndarray, captions: list[str],
                    wrong: np.ndarray, path: str, *, title: str,
                    columns: int = 10, dpi: int = DPI) -> list[int]:
  """Draws digits in a grid, each captioned; wrong ones in red, framed red.

  One image of all the digits, framed and captioned on one axes: a hundred
  axes of a digit each draw the same picture ten times slower, and this
  picture is what stands between a run's last evaluation and its exit.

  Args:
    images: uint8 [N, 28, 28], MNIST's white ink on black (drawn inverted,
      black on white, as on paper).
    captions: one per image, shown under it.
    wrong: bool [N], the cells to mark.
    path: the PNG to write.
    title: the figure's title.
    columns: cells per row.
    dpi: resolution of the PNG.

  Returns:
    The indices of the cells whose caption was drawn red, read back from the
    drawing itself rather than from `wrong`.
  """
  rows = max(1, math.ceil(len(images) / columns))
  lines = max((caption.count('\n') + 1 for caption in captions), default=1)
  pitch_x = 28 + 2 * _MARGIN
  pitch_y = pitch_x + _CAPTION_LINE * lines
  canvas = np.zeros((rows * pitch_y, columns * pitch_x), np.uint8)
  corners = [(i % columns * pitch_x + _MARGIN, i // columns * pitch_y + _MARGIN)
             for i in range(len(images))]
  for (x, y), image in zip(corners, images):
    canvas[y:y + 28, x:x + 28] = image
  width = columns * 0.8  # Inches: the size the codelab's grids have.
  title_height = 0.4
  height = width * canvas.shape[0] / canvas.shape[1] + title_height
  figure = Figure(figsize=(width, height), dpi=dpi)
  axes = figure.add_axes((0, 0, 1, 1 - title_height / height))
  axes.set_axis_off()
  # Nearest: crisp 28x28 pixels, and a PNG a third the size of smoothed ones.
  axes.imshow(canvas, cmap='gray_r', vmin=0, vmax=255,
              interpolation='nearest')
  colors = [WRONG if is_wrong else 'black' for is_wrong in wrong]
  axes.add_collection(matplotlib.collections.PatchCollection(
      [matplotlib.patches.Rectangle((x - 0.5, y - 0.5), 28, 28)
       for x, y in corners], facecolor='none',
      edgecolor=[WRONG if is_wrong else 'lightgray' for is_wrong in wrong],
      linewidth=[2 if is_wrong else 0.5 for is_wrong in wrong]))
  for (x, y), caption, color in zip(corners, captions, colors):
    axes.text(x + 13.5, y + 28 + 1, caption, color=color, fontsize=11,
              ha='center', va='top', linespacing=1.0)
  figure.suptitle(title)
  _save(figure, path)
  return [i for i, text in enumerate(axes.texts)
          if matplotlib.colors.same_color(text.get_color(), WRONG)]


def plot_predictions(images: np.ndarray, labels: np.ndarray,
                     classes: np.ndarray, path: str, *, count: int = 100,
                     dpi: int = DPI) -> list[int]:
  """The first `count` test digits, each with its predicted class.

  Returns:
    The cells drawn red, as `plot_digit_grid` reads them back.
  """
  images, labels, classes = images[:count], labels[:count], classes[:count]
  wrong = classes != labels
  return plot_digit_grid(
      images, [str(c) for c in classes], wrong, path, dpi=dpi,
      title=f'the first {len(images)} test digits and the predicted class: '
      f'{wrong.sum()} wrong, in red')


def plot_worst_mistakes(images: np.ndarray, labels: np.ndarray,
                        probabilities: np.ndarray, path: str, *,
                        count: int = 40, dpi: int = DPI) -> np.ndarray:
  """The wrong predictions made with the highest probability, surest first.

  Returns:
    The indices, into images, of the digits shown.
  """
  classes = probabilities.argmax(axis=-1)
  wrong = np.flatnonzero(classes != labels)
  confidence = probabilities[wrong, classes[wrong]]
  worst = wrong[np.argsort(-confidence, kind='stable')][:count]
  plot_digit_grid(
      images[worst],
      [f'{classes[i]} ({probabilities[i, classes[i]]:.0%})\ntrue {labels[i]}'
       for i in worst],
      np.ones(len(worst), bool), path, dpi=dpi,
      title=f'the {len(worst)} surest of {len(wrong)} mistakes on '
      f'{len(labels)} test digits: predicted (probability), true')
  return worst


def plot_confusion_matrix(labels: np.ndarray, classes: np.ndarray, path: str,
                          *, dpi: int = DPI) -> np.ndarray:
  """Counts of (true, predicted) pairs; returns the [10, 10] matrix drawn."""
  counts = np.zeros((idx.NUM_CLASSES, idx.NUM_CLASSES), np.int64)
  np.add.at(counts, (labels.astype(np.int64), classes), 1)
  figure = Figure(figsize=(6.5, 5.5), dpi=dpi)
  axes = figure.subplots()
  figure.subplots_adjust(left=0.1, right=1.02, bottom=0.1, top=0.92)
  # Log colors, zeros blank: the few mistakes stand out next to the diagonal.
  image = axes.imshow(np.ma.masked_equal(counts, 0), cmap='Blues',
                      norm=matplotlib.colors.LogNorm(vmin=1))
  figure.colorbar(image, ax=axes, label='test digits')
  for (true, predicted), count in np.ndenumerate(counts):
    if count:  # White on the darker half of the log scale.
      axes.text(predicted, true, str(count), ha='center', va='center',
                fontsize=8,
                color='white' if count**2 > counts.max() else 'black')
  ticks = range(idx.NUM_CLASSES)
  axes.set(xticks=ticks, yticks=ticks, xlabel='predicted', ylabel='true',
           title=f'confusion matrix: {np.trace(counts)} of {len(labels)} '
           f'right ({np.trace(counts) / len(labels):.2%})')
  _save(figure, path)
  return counts


def missing(workdir: str) -> bool:
  """True if make_all has not yet run to its end on WORKDIR's files.

  Its first plot needs only the metrics, its last (the confusion matrix)
  a whole export too.
  """
  plots_dir = workdir_lib.path(workdir, workdir_lib.PLOTS)
  last = ('confusion_matrix.png' if export.is_complete(
      workdir_lib.path(workdir, workdir_lib.EXPORT)) else 'training_curves.png')
  return not tf.io.gfile.exists(os.path.join(plots_dir, last))


def make_all(workdir: str, *, dpi: int = DPI, model=None,
             test: input_pipeline.Split | None = None) -> list[str]:
  """Writes every plot that WORKDIR's files allow; returns their paths.

  model, test: the trainer's model and test split, in memory, which the
  export was just written from: the predictions are then computed on them
  by the export's own function (`export.predict_fn`), rather than by loading
  both back (a second of the run's end).
  """
  config = workdir_lib.read_config(workdir)
  records = metrics_file.read_metrics(workdir)
  plots_dir = workdir_lib.path(workdir, workdir_lib.PLOTS)
  tf.io.gfile.makedirs(plots_dir)
  written = []

  def path(name):  # The path of a plot, noted as written.
    written.append(os.path.join(plots_dir, name))
    return written[-1]

  if records:
    plot_training_curves(records, path('training_curves.png'), dpi=dpi)
    plot_learning_rate(config, records, path('learning_rate.png'), dpi=dpi)
  else:
    logging.warning('%s: no evaluations yet; no curves', workdir)
  export_dir = workdir_lib.path(workdir, workdir_lib.EXPORT)
  if not tf.io.gfile.exists(export_dir):
    logging.warning('%s: no export; no predictions', export_dir)
    return written
  try:
    predict = (export.predict_fn(model) if model is not None
               else export.load_predict_fn(export_dir))
  except errors.WorkdirError as e:
    # Cut short: the trainer's next start redoes it, then these plots.
    logging.warning('%s; no predictions', e)
    return written
  if test is None:
    _, test = input_pipeline.load(config.data, seed=config.seed)
  probabilities, classes = predict(test.images)
  plot_predictions(test.images, test.labels, classes,
                   path('predictions.png'), dpi=dpi)
  plot_worst_mistakes(test.images, test.labels, probabilities,
                      path('worst_mistakes.png'), dpi=dpi)
  plot_confusion_matrix(test.labels, classes, path('confusion_matrix.png'),
                        dpi=dpi)
  return written


class Plots(actions.Action):
  """WORKDIR/plots at the end of a run, if new or missing (after the export,
  whose predictions three of them show)."""

  def finish(self, context, *, trained):
    if trained or missing(context.workdir):
      # The model as exported: its evaluated weights, for good, by now.
      written = make_all(context.workdir, model=context.model,
                         test=context.splits['test'])
      logging.info('Wrote %d plots to %s', len(written),
                   workdir_lib.path(context.workdir, workdir_lib.PLOTS))


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = argparse_flags.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdir', metavar='WORKDIR',
                      help='The --workdir of a run (local or gs://).')
  parser.add_argument('--dpi', type=int, default=DPI,
                      help='Resolution of the PNGs (default: %(default)s).')
  return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
  try:
    for path in make_all(args.workdir, dpi=args.dpi):
      print(path)
  # WorkdirError: a damaged metrics.jsonl.
  except (OSError, errors.DataError, errors.WorkdirError) as e:
    cli.fail(cli.one_line(e), errors.EXIT_FAILED)


def run():
  """Console-script entry point."""
  cli.run(main, flags_parser=_parse_flags)
