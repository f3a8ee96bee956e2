"""Any picture of a digit becomes an MNIST digit; the command reads files."""

import argparse
import json
import re
import subprocess
import sys

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
import pytest

from helpers import ROOT
from helpers import load_config
from helpers import small_config
from mnist_dist import export
from mnist_dist import idx
from mnist_dist import models
from mnist_dist import predict
from mnist_dist import train


def _draw(text, *, size, ink, paper, mode='RGB'):
  """text printed with Pillow's scalable default font, off-centre on a page."""
  page = Image.new(mode, (size * 3, size * 2), paper)
  ImageDraw.Draw(page).text((size // 3, size // 2), text, fill=ink,
                            font=ImageFont.load_default(size=size))
  return page


def _center_of_mass(digit):
  weights = digit / digit.sum()
  return ((weights.sum(axis=1) * np.arange(28)).sum(),
          (weights.sum(axis=0) * np.arange(28)).sum())


def _shift_tolerant_correlation(a, b):
  """Correlation of a and b at the best shift of up to one pixel."""
  return max(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).ravel(),
                         b.ravel())[0, 1]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1))


# (font size, ink, paper, image mode): gray and color, both polarities,
# transparent paper, from a 45 to a 220 pixel font.
VARIANTS = [
    (100, 0, 255, 'L'),
    (100, 255, 0, 'L'),
    (60, (20, 20, 120), (250, 240, 200), 'RGB'),
    (220, (255, 230, 0), (30, 0, 60), 'RGB'),
    (45, (200, 0, 0, 255), (0, 0, 0, 0), 'RGBA'),
]


@pytest.mark.parametrize('variant', VARIANTS)
def test_preprocess_makes_mnist_digits(variant):
  size, ink, paper, mode = variant
  for text in '0123456789':
    digit = predict.preprocess(_draw(text, size=size, ink=ink, paper=paper,
                                     mode=mode))
    assert digit.dtype == np.uint8 and digit.shape == (28, 28)
    rows = np.flatnonzero(digit.any(axis=1))
    columns = np.flatnonzero(digit.any(axis=0))
    # White ink on black, fitted into 20x20, centre of mass at (14, 14).
    assert digit.max() >= 250 and digit[0].max() == digit[:, 0].max() == 0
    assert max(rows[-1] - rows[0], columns[-1] - columns[0]) + 1 == 20, text
    assert np.allclose(_center_of_mass(digit.astype(float)), 14, atol=0.5)


def test_polarity_color_transparency_and_size_do_not_matter():
  for text in '0123456789':
    reference = predict.preprocess(_draw(text, size=100, ink=0, paper=255,
                                         mode='L'))
    # Light on dark gives exactly what dark on light gives.
    np.testing.assert_array_equal(
        predict.preprocess(_draw(text, size=100, ink=255, paper=0, mode='L')),
        reference)
    for size, ink, paper, mode in VARIANTS[2:]:
      digit = predict.preprocess(_draw(text, size=size, ink=ink, paper=paper,
                                       mode=mode)).astype(float)
      # Fonts are hinted differently at each size: same shape, but only to
      # within a pixel.
      assert _shift_tolerant_correlation(digit, reference) > 0.85, (text,
                                                                     size)


def test_real_mnist_digits_survive_a_trip_through_a_photo(mnist_dir):
  # Real test digits, enlarged 3 to 14 times, made dark on a tinted page,
  # placed anywhere on it: preprocess should give the digits back.
  images, _ = idx.load_split(mnist_dir, 'test')
  rng = np.random.default_rng(0)
  correlations = []
  for original in images[:100]:
    scale = int(rng.integers(3, 15))
    page = Image.new('L', (28 * scale + 100, 28 * scale + 60), 0)
    page.paste(Image.fromarray(original).resize((28 * scale, 28 * scale),
                                                Image.Resampling.BICUBIC),
               (int(rng.integers(0, 100)), int(rng.integers(0, 60))))
    dark_on_light = Image.fromarray(255 - np.asarray(page))
    tinted = Image.merge('RGB', [dark_on_light,
                                 dark_on_light.point(lambda v: v * 0.9),
                                 dark_on_light.point(lambda v: 30 + v * 0.8)])
    digit = predict.preprocess(tinted)
    correlations.append(np.corrcoef(digit.ravel().astype(float),
                                    original.ravel().astype(float))[0, 1])
  assert np.mean(correlations) > 0.93
  assert np.percentile(correlations, 10) > 0.8


def test_a_flat_image_has_no_digit():
  with pytest.raises(ValueError, match='no digit found'):
    predict.preprocess(Image.new('RGB', (40, 30), (200, 180, 90)))


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
  """An untrained model's export: these tests read files, not digits."""
  path = str(tmp_path_factory.mktemp('export'))
  export.export_saved_model(models.create_model(small_config().model), path)
  return path


def _write_images(folder):
  """Two readable digits, a file that is no image, and a missing path."""
  paths = {name: str(folder / name) for name in (
      'three.png', 'not_an_image.png', 'missing.png', 'seven.jpg')}
  _draw('3', size=80, ink=0, paper=255, mode='L').save(paths['three.png'])
  _draw('7', size=50, ink=(240, 240, 255), paper=(10, 40, 10)).save(
      paths['seven.jpg'])
  with open(paths['not_an_image.png'], 'w') as f:
    f.write('a text file')
  return paths


def test_unreadable_files_get_an_error_line_and_the_others_answers(
    export_dir, tmp_path):
  paths = _write_images(tmp_path)
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict', f'--model={export_dir}',
       *paths.values()],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == predict.EXIT_FAILED
  errors = [line for line in process.stderr.splitlines()
            if line.startswith('error: ')]
  assert errors == [
      f'error: {paths["not_an_image.png"]}: not an image Pillow can read',
      f'error: {paths["missing.png"]}: no such file']
  answers = process.stdout.splitlines()
  assert [line.split(': ')[0] for line in answers] == [
      paths['three.png'], paths['seven.jpg']]
  # The answers are the export's on the preprocessed images.
  probabilities, classes = export.load_predict_fn(export_dir)(np.stack(
      [predict.preprocess(Image.open(paths[name]))
       for name in ('three.png', 'seven.jpg')]))
  for line, p, digit in zip(answers, probabilities, classes):
    assert re.fullmatch(r'.*: \d \(\d+\.\d%\)', line), line
    assert line.endswith(f': {digit} ({p[digit]:.1%})')


_REMOTE_CAUSES = ('cannot reach the store (network or DNS)',
                  'access denied (credentials or permissions)', 'not found')


def test_an_unreachable_remote_image_or_model_is_one_line(export_dir,
                                                          tmp_path):
  three = _write_images(tmp_path)['three.png']
  remote = 'gs://mnist-dist-no-such-bucket/three.png'
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict', f'--model={export_dir}',
       remote, three],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == predict.EXIT_FAILED
  (error,) = [line for line in process.stderr.splitlines()
              if line.startswith('error: ')]
  assert any(error in (f'error: {remote}: cannot read it: {cause}',
                       f'error: {remote}: no such file')
             for cause in _REMOTE_CAUSES), error
  assert process.stdout.startswith(f'{three}: ')  # The others are answered.
  model = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict',
       '--model=gs://mnist-dist-no-such-bucket/export', three],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert model.returncode == predict.EXIT_FAILED
  assert 'Traceback' not in model.stderr, model.stderr[-2000:]
  assert model.stderr.strip().splitlines()[-1].startswith(
      'error: --model=gs://mnist-dist-no-such-bucket/export: ')


def test_json_output(export_dir, tmp_path, capsys):
  paths = _write_images(tmp_path)
  predict.main(argparse.Namespace(
      model=export_dir, json=True,
      images=[paths['three.png'], paths['seven.jpg']]))
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r['path'] for r in records] == [paths['three.png'],
                                          paths['seven.jpg']]
  for record in records:
    assert set(record) == {'path', 'digit', 'probability', 'probabilities'}
    assert len(record['probabilities']) == 10
    assert sum(record['probabilities']) == pytest.approx(1, abs=1e-4)
    assert record['digit'] == np.argmax(record['probabilities'])
    assert record['probability'] == max(record['probabilities'])


@pytest.mark.slow
def test_a_trained_model_reads_printed_digits(tmp_path, mnist_dir):
  # conv_bn, one epoch, learning rate decayed over it: ~99% on MNIST.
  config = load_config('conv_bn')
  config.data.dir = mnist_dir
  config.train.epochs = 1
  config.optimizer.staircase = False
  config.optimizer.decay_rate = 0.05
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  export_dir = str(tmp_path / 'run' / 'export')
  export.export_saved_model(result.model, export_dir)

  # Clear printed digits: even ones black on white PNGs, odd ones white on
  # blue JPEGs.
  names = []
  for digit in range(10):
    if digit % 2:
      image = _draw(str(digit), size=120, ink='white', paper=(30, 40, 90))
      names.append(f'{digit}.jpg')
    else:
      image = _draw(str(digit), size=120, ink=0, paper=255, mode='L')
      names.append(f'{digit}.png')
    image.save(tmp_path / names[-1])
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict', f'--model={export_dir}',
       *names], cwd=tmp_path, capture_output=True, text=True, timeout=300,
      check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  print(f'test accuracy {result.metrics[-1]["eval_accuracy"]:.2%}')
  print(process.stdout, end='')
  read = [int(line.split(': ')[1].split()[0])
          for line in process.stdout.splitlines()]
  assert sum(d == r for d, r in zip(range(10), read, strict=True)) >= 8, (
      process.stdout)
