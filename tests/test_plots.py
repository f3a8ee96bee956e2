"""The plots of a real (small, synthetic) run: valid PNGs, and honest ones."""

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from helpers import ROOT
from helpers import small_config
from mnist_dist import train
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.data import input_pipeline
from mnist_dist.outputs import export
from mnist_dist.outputs import plots

NAMES = ('training_curves.png', 'learning_rate.png', 'predictions.png',
         'worst_mistakes.png', 'confusion_matrix.png')
RED = np.array([214, 39, 40])  # matplotlib's tab:red, plots.WRONG.


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A finished 2-epoch run on synthetic data, config.json and export too."""
  workdir = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(
      small_config({'train.epochs': 2, 'outputs.saved_model': True}),
      str(workdir))
  return workdir


@pytest.fixture(scope='module')
def predicted(workdir):
  """The run's test split and the export's predictions on it."""
  config = workdir_lib.read_config(str(workdir))
  _, test = input_pipeline.load(config.data, seed=config.seed)
  probabilities, classes = export.load_predict_fn(str(workdir / 'export'))(
      test.images)
  return test, probabilities, classes


def _red_pixels(path):
  pixels = np.asarray(Image.open(path).convert('RGB'), np.int32)
  return int((np.abs(pixels - RED).max(axis=-1) < 30).sum())


def test_make_all_writes_every_plot_as_a_png(workdir):
  written = plots.make_all(str(workdir), dpi=50)
  assert written == [str(workdir / 'plots' / name) for name in NAMES]
  for path in written:
    with Image.open(path) as image:
      assert image.format == 'PNG'
      width, height = image.size
      # At dpi 50 every figure is a few inches: 150 to 1000 pixels a side.
      assert 150 <= width <= 1000 and 150 <= height <= 1000, (path, image.size)
      pixels = np.asarray(image.convert('L'))
    assert pixels.std() > 10, f'{path} is nearly blank'


def test_without_an_export_only_the_curves(workdir, tmp_path):
  for name in ('config.json', 'metrics.jsonl'):
    shutil.copy(workdir / name, tmp_path / name)
  assert plots.make_all(str(tmp_path), dpi=50) == [
      str(tmp_path / 'plots' / name) for name in NAMES[:2]]


def test_an_export_cut_short_makes_no_predictions(workdir, tmp_path, caplog):
  for name in ('config.json', 'metrics.jsonl'):
    shutil.copy(workdir / name, tmp_path / name)
  # As a stop during a gs:// rename leaves it: no marker, no variables.
  shutil.copytree(workdir / 'export', tmp_path / 'export',
                  ignore=shutil.ignore_patterns(export.MARKER, 'variables'))
  assert plots.make_all(str(tmp_path), dpi=50) == [
      str(tmp_path / 'plots' / name) for name in NAMES[:2]]
  assert 'export/ is incomplete' in caplog.text


def test_damaged_metrics_are_one_error_line(workdir, tmp_path, capsys):
  shutil.copy(workdir / 'config.json', tmp_path / 'config.json')
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1\n{"step": 2}\n')
  with pytest.raises(SystemExit) as exit_info:
    plots.main(argparse.Namespace(workdir=str(tmp_path), dpi=50))
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.startswith(
      f'error: {tmp_path}/metrics.jsonl: line 1 of 2 is damaged')


def test_the_grid_marks_exactly_the_wrong_predictions(predicted, tmp_path):
  test, _, classes = predicted
  labels = classes[:30].copy()
  assert plots.plot_predictions(test.images, labels, classes,
                                str(tmp_path / 'right.png'), count=30) == []
  assert _red_pixels(tmp_path / 'right.png') == 0

  labels[[3, 17, 29]] = (labels[[3, 17, 29]] + 1) % 10
  marked = plots.plot_predictions(test.images, labels, classes,
                                  str(tmp_path / 'wrong.png'), count=30)
  assert marked == [3, 17, 29]
  assert _red_pixels(tmp_path / 'wrong.png') > 100  # Frames and captions.


def test_worst_mistakes_are_the_surest_wrong_predictions(predicted, tmp_path):
  test, probabilities, classes = predicted
  shown = plots.plot_worst_mistakes(test.images, test.labels, probabilities,
                                    str(tmp_path / 'worst.png'), count=12)
  wrong = classes != test.labels
  assert len(shown) == 12 and wrong[shown].all()
  confidence = probabilities.max(axis=-1)
  # The 12 highest confidences among all wrong predictions, highest first.
  np.testing.assert_array_equal(confidence[shown],
                                np.sort(confidence[wrong])[::-1][:12])


def test_confusion_matrix_counts_every_test_digit(predicted, tmp_path):
  test, _, classes = predicted
  counts = plots.plot_confusion_matrix(test.labels, classes,
                                       str(tmp_path / 'confusion.png'))
  assert counts.sum() == len(test)
  assert np.trace(counts) == (classes == test.labels).sum()
  np.testing.assert_array_equal(counts.sum(axis=1),
                                np.bincount(test.labels, minlength=10))
  np.testing.assert_array_equal(counts.sum(axis=0),
                                np.bincount(classes, minlength=10))


@pytest.mark.slow  # A process that loads TensorFlow.
def test_command_line_regenerates_from_the_workdir(workdir):
  shutil.rmtree(workdir / 'plots', ignore_errors=True)
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.plots', str(workdir), '--dpi=40'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  assert process.stdout.split() == [
      str(workdir / 'plots' / name) for name in NAMES]
  assert sorted(os.listdir(workdir / 'plots')) == sorted(NAMES)


def test_a_missing_workdir_is_one_error_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    plots.main(argparse.Namespace(workdir=str(tmp_path / 'nothing'), dpi=50))
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == (
      f'error: {tmp_path}/nothing/config.json: no such file; is '
      f'{tmp_path}/nothing a workdir?\n')
