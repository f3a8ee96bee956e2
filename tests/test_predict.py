"""Any picture of a digit becomes an MNIST digit; the command reads files."""

import argparse
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import ExifTags
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
import pytest

from helpers import assert_refused
from helpers import load_config
from helpers import ROOT
from helpers import small_config
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.data import idx
from mnist_dist.modeling import models
from mnist_dist.outputs import export
from mnist_dist.outputs import litert
from mnist_dist.tools import images
from mnist_dist.tools import predict


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
  """Two readable digits: {name: path}."""
  paths = {name: str(folder / name) for name in ('three.png', 'seven.jpg')}
  _draw('3', size=80, ink=0, paper=255, mode='L').save(paths['three.png'])
  _draw('7', size=50, ink=(240, 240, 255), paper=(10, 40, 10)).save(
      paths['seven.jpg'])
  return paths


def _png(width, height, *, bits=1):
  """A black grayscale PNG of any size, made without the memory it claims."""

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))

  row = bytes(1 + (width * bits + 7) // 8)  # Filter type 0, then zeros.
  compressor = zlib.compressobj(9)
  pixels = b''.join(compressor.compress(row * 1000)
                    for _ in range(height // 1000))
  pixels += compressor.compress(row * (height % 1000)) + compressor.flush()
  return (b'\x89PNG\r\n\x1a\n' +
          chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, bits, 0, 0, 0,
                                     0)) +
          chunk(b'IDAT', pixels) + chunk(b'IEND', b''))


def _jpeg_of_scans(picture, scans):
  """A progressive JPEG of picture, its smallest scan repeated to make `scans`.

  Each repetition is a few bytes, and one more pass over the whole image for
  a decoder that takes it (libjpeg only warns of such a progression).
  """
  buffer = io.BytesIO()
  picture.save(buffer, 'JPEG', progressive=True)
  whole = buffer.getvalue()
  starts = [found.start() for found in re.finditer(b'\xff\xda', whole)]
  end = whole.rindex(b'\xff\xd9')
  smallest = min((whole[start:stop] for start, stop in
                  zip(starts, [*starts[1:], end])), key=len)
  return (whole[:end] + smallest * (scans - len(starts)) + whole[end:])


@pytest.fixture(scope='module')
def hostile_files(tmp_path_factory):
  """What users and web forms hand in, readable or not.

  Returns:
    readable: {path: an ordinary picture of what the file shows}.
    refused: {path: the reason its error line gives}, a trailing '(' for a
      reason that goes on with the decoder's words.
  """
  folder = tmp_path_factory.mktemp('hostile')
  readable, refused = {}, {}

  def page(text):
    return _draw(text, size=60, ink=0, paper=255, mode='L')

  def path(name):
    return str(folder / name)

  for written in _write_images(folder).values():
    readable[written] = Image.open(written)
  # 16 bits per pixel: Pillow's own conversion to 8 bits makes it all white.
  five = page('5')
  Image.fromarray(np.asarray(five).astype(np.uint16) * 257).save(
      path('16_bit.png'))
  readable[path('16_bit.png')] = five
  # A palette whose transparent paper has the ink's color.
  ink = np.asarray(page('2')) < 128
  two = Image.fromarray(ink.astype(np.uint8), 'P')
  two.putpalette([0, 0, 0, 0, 0, 0])
  two.save(path('palette_transparent.png'), transparency=0)
  readable[path('palette_transparent.png')] = Image.fromarray(
      np.where(ink, 0, 255).astype(np.uint8))
  # An animation: its first frame is the picture.
  page('4').save(path('animated.gif'), save_all=True, duration=200,
                 append_images=[page('8')])
  readable[path('animated.gif')] = page('4')
  six = _draw('6', size=60, ink=(20, 20, 120), paper=(250, 240, 200))
  six.convert('CMYK').save(path('cmyk.jpg'), quality=95)
  readable[path('cmyk.jpg')] = six
  # A phone photo: stored sideways, with the EXIF orientation that turns it.
  exif = Image.Exif()
  exif[ExifTags.Base.Orientation] = 6  # Turn 90 degrees clockwise to show.
  page('7').rotate(90, expand=True).save(path('exif_rotated.jpg'),
                                         quality=95, exif=exif)
  readable[path('exif_rotated.jpg')] = page('7')
  # Huge but legal: 44 megapixels (8100x5400).
  page('9').resize((8100, 5400)).save(path('huge.png'), compress_level=1)
  readable[path('huge.png')] = page('9')
  page('0').resize((8100, 5400)).save(path('huge.jpg'), quality=90)
  readable[path('huge.jpg')] = page('0')

  # Decompression bombs: 109 kB for 30000x30000 pixels, past Pillow's own
  # limit (179 million); 21 kB for 13000x13000, under it.
  for name, side in (('bomb.png', 30000), ('bomb_169mp.png', 13000)):
    with open(path(name), 'wb') as f:
      f.write(_png(side, side))
  refused[path('bomb.png')] = 'more than the 50,000,000 pixels this reads'
  refused[path('bomb_169mp.png')] = (
      '13000x13000 pixels: more than the 50,000,000 this reads')
  open(path('empty.png'), 'wb').close()
  refused[path('empty.png')] = 'empty file'
  with open(path('text.png'), 'w') as f:
    f.write('a text file')
  refused[path('text.png')] = 'not a PNG, JPEG, GIF, BMP or WebP image'
  page('3').save(path('scan.tif'))  # Pillow reads TIFF; this does not.
  refused[path('scan.tif')] = 'not a PNG, JPEG, GIF, BMP or WebP image'
  for name in ('truncated.png', 'truncated.jpg'):
    buffer = io.BytesIO()
    _draw('1', size=60, ink=(0, 90, 0), paper='white').save(
        buffer, name.split('.')[-1].replace('jpg', 'jpeg'))
    with open(path(name), 'wb') as f:
      f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    refused[path(name)] = 'cannot decode ('
  # 12 megapixels, 800 kB: each scan a few more milliseconds to decode.
  with open(path('many_scans.jpg'), 'wb') as f:
    f.write(_jpeg_of_scans(page('8').resize((4000, 3000)), 12000))
  refused[path('many_scans.jpg')] = (
      'a JPEG of 12000 scans: more than the 100 this decodes')
  with open(path('too_long.png'), 'wb') as f:
    f.truncate(64 * 2**20 + 1)  # Sparse: no time or disk to write it.
  refused[path('too_long.png')] = 'larger than 64 MiB'
  Image.new('RGB', (40, 30), (200, 180, 90)).save(path('flat.png'))
  refused[path('flat.png')] = 'no digit found: the image is one flat color'
  refused[path('missing.png')] = 'no such file'
  return readable, refused


def test_each_file_gets_an_answer_or_its_own_error_line(export_dir,
                                                        hostile_files):
  readable, refused = hostile_files
  given = sorted([*readable, *refused])  # Mixed: good and bad alternate.
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict', f'--model={export_dir}',
       *given], cwd=ROOT, capture_output=True, text=True, timeout=300,
      check=False)
  assert process.returncode == errors.EXIT_FAILED
  assert 'Traceback' not in process.stderr, process.stderr[-3000:]
  assert 'DecompressionBomb' not in process.stderr
  lines = [line for line in process.stderr.splitlines()
           if line.startswith('error: ')]
  expected = [f'error: {path}: {refused[path]}' for path in given
              if path in refused]
  assert len(lines) == len(expected), lines
  for error, start in zip(lines, expected):
    assert error == start or (start.endswith('(') and error.startswith(start)
                              and error.endswith(')')), (error, start)
  answers = process.stdout.splitlines()
  assert [line.rsplit(': ', 1)[0] for line in answers] == [
      path for path in given if path in readable]
  # The answers are the export's on the preprocessed images.
  probabilities, classes = export.load_predict_fn(export_dir)(np.stack(
      [predict.preprocess(images.load(path)) for path in given
       if path in readable]))
  for line, p, digit in zip(answers, probabilities, classes):
    assert re.fullmatch(r'.*: \d \(\d+\.\d%\)', line), line
    assert line.endswith(f': {digit} ({p[digit]:.1%})')


def test_every_kind_of_file_reads_as_an_ordinary_picture(hostile_files):
  readable, _ = hostile_files
  for path, picture in readable.items():
    digit = predict.preprocess(images.load(path)).astype(float)
    expected = predict.preprocess(picture).astype(float)
    # A huge picture's ink is smooth where the small one's is jagged.
    minimum = 0.85 if 'huge' in path else 0.99
    assert _shift_tolerant_correlation(digit, expected) > minimum, path


@pytest.mark.parametrize('image_format', ['PNG', 'JPEG', 'GIF', 'BMP',
                                          'WEBP'])
def test_damaged_files_are_refused_in_one_line(image_format):
  # Cut anywhere, or with bytes changed anywhere: a digit or a ValueError,
  # which predict prints as one line, never another exception.
  buffer = io.BytesIO()
  picture = _draw('4', size=30, ink=(0, 90, 0), paper='white')
  (picture.convert('P') if image_format == 'GIF' else picture).save(
      buffer, image_format)
  whole = buffer.getvalue()
  rng = np.random.default_rng(0)
  damaged = [whole[:int(cut)] for cut in np.linspace(1, len(whole) - 1, 150)]
  for _ in range(150):
    changed = np.frombuffer(whole, np.uint8).copy()
    changed[rng.integers(0, len(whole), rng.integers(1, 9))] = rng.integers(
        0, 256, dtype=np.uint8)
    damaged.append(changed.tobytes())
  refused = 0
  for raw in damaged:
    try:
      predict.preprocess(images.decode(raw))
    except ValueError as e:
      assert '\n' not in str(e)
      refused += 1
  assert refused >= 100  # Most cuts and changes do damage.


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(hostile_files):
  readable, _ = hostile_files
  (path,) = [path for path in readable if path.endswith('huge.jpg')]
  # 8100x5400 at 1/4: the smallest scale that keeps 1024 pixels a side.
  assert images.load(path).size == (2025, 1350)


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding():
  picture = _draw('2', size=30, ink=(0, 90, 0), paper='white')
  with pytest.raises(ValueError, match=(
      '^a JPEG of 101 scans: more than the 100 this decodes$')):
    images.decode(_jpeg_of_scans(picture, 101))
  decoded = images.decode(_jpeg_of_scans(picture, 100))
  assert decoded.size == picture.size and decoded.info['progressive']


# Run by a fresh interpreter: the peak of its resident memory (Linux's
# VmHWM, reset after the imports) is what reading the files took.
_READ_AND_MEASURE = """
import json, re, sys, time
from mnist_dist.tools import images
from mnist_dist.tools import predict
def status_bytes(field):
  with open('/proc/self/status') as f:
    return int(re.search(field + r':\\s+(\\d+) kB', f.read())[1]) * 1024
with open('/proc/self/clear_refs', 'w') as f:
  f.write('5')  # The peak is now the present.
before, seconds = status_bytes('VmRSS'), {}
for path in sys.argv[1:]:
  start = time.perf_counter()
  try:
    predict.preprocess(images.load(path))
  except ValueError:
    pass
  seconds[path] = time.perf_counter() - start
print(json.dumps({'bytes': status_bytes('VmHWM') - before, 'seconds': seconds}))
"""


def test_reading_any_file_takes_bounded_memory_and_time(hostile_files):
  readable, refused = hostile_files
  process = subprocess.run(
      [sys.executable, '-c', _READ_AND_MEASURE, *readable, *refused],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  measured = json.loads(process.stdout)
  print(f'{measured["bytes"] / 1e6:.0f} MB, the slowest file '
        f'{max(measured["seconds"].values()):.2f} s')
  # The largest picture, 44 megapixels at a byte each, is held twice: as
  # decoded and in gray (88 MB).
  assert measured['bytes'] < 150e6
  assert max(measured['seconds'].values()) < 5


def test_a_tflite_model_answers_as_its_saved_model(export_dir, tmp_path,
                                                   capsys):
  tflite = str(tmp_path / 'model.tflite')
  with open(tflite, 'wb') as f:
    f.write(litert.convert(export_dir))
  paths = list(_write_images(tmp_path).values())
  answers = []
  for model in (export_dir, tflite):
    predict.main(argparse.Namespace(model=model, json=True, images=paths))
    answers.append([json.loads(line)
                    for line in capsys.readouterr().out.splitlines()])
  saved_model, lite = answers
  assert [a['path'] for a in lite] == paths
  assert [a['digit'] for a in lite] == [a['digit'] for a in saved_model]
  for a, b in zip(lite, saved_model):
    assert a['probabilities'] == pytest.approx(b['probabilities'], abs=1e-4)


@pytest.mark.parametrize('content, error', [
    (b'', 'empty file'),
    (b'a text file', 'The model is not a valid Flatbuffer buffer')])
def test_a_file_that_is_no_tflite_model_is_one_line(tmp_path, capsys,
                                                    content, error):
  model = tmp_path / 'model.tflite'
  model.write_bytes(content)
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argparse.Namespace(
        model=str(model), json=False,
        images=list(_write_images(tmp_path).values())))
  assert exit_info.value.code == errors.EXIT_FAILED
  assert capsys.readouterr().err == f'error: --model={model}: {error}\n'


_REMOTE_CAUSES = ('cannot reach the store (network or DNS)',
                  'access denied (credentials or permissions)', 'not found')


@pytest.mark.slow  # A process that loads TensorFlow.
def test_an_unreachable_remote_image_or_model_is_one_line(export_dir,
                                                          tmp_path):
  three = _write_images(tmp_path)['three.png']
  remote = 'gs://mnist-dist-no-such-bucket/three.png'
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict',
       f'--model={export_dir}', remote, three],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  error = assert_refused(process, code=errors.EXIT_FAILED,
                         says=f'error: {remote}: ')
  assert any(error in (f'error: {remote}: cannot read it: {cause}',
                       f'error: {remote}: no such file')
             for cause in _REMOTE_CAUSES), error
  assert process.stdout.startswith(f'{three}: ')  # The others are answered.
  model = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.predict',
       '--model=gs://mnist-dist-no-such-bucket/export', three],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert_refused(model, code=errors.EXIT_FAILED,
                 says='error: --model=gs://mnist-dist-no-such-bucket/export: ')


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
    # Each of the 10 rounded to 4 significant digits: off by 5e-5 at most.
    assert sum(record['probabilities']) == pytest.approx(1, abs=10 * 5e-5)
    assert record['digit'] == np.argmax(record['probabilities'])
    assert record['probability'] == max(record['probabilities'])


_EXPORTED = re.compile(
    r'(?P<path>.+): (?P<bytes>[\d,]+) bytes; on the 10000 test images: '
    r'accuracy (?P<accuracy>[\d.]+)% \(the SavedModel (?P<saved_model>[\d.]+)'
    r'%\), the same digit as the SavedModel on (?P<agreement>[\d.]+)%')


@pytest.mark.slow
def test_a_trained_model_reads_printed_digits_in_each_format(tmp_path,
                                                             mnist_dir):
  # conv_bn, one epoch, learning rate decayed over it: ~99% on MNIST.
  config = load_config('conv_bn')
  config.data.dir = mnist_dir
  config.train.epochs = 1
  config.optimizer.staircase = False
  config.optimizer.decay_rate = 0.05
  config.outputs.plots = False
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  print(f'test accuracy {result.metrics[-1]["eval_accuracy"]:.2%}')

  # The LiteRT models, run on the whole test set by the export command.
  exported = {}
  for quantize in ('none', 'int8'):
    process = subprocess.run(
        [sys.executable, '-m', 'mnist_dist.litert', workdir,
         '--format=litert', f'--quantize={quantize}'], cwd=ROOT,
        capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    print(process.stdout, end='')
    exported[quantize] = _EXPORTED.fullmatch(process.stdout.strip())
  floats, int8 = exported['none'], exported['int8']
  assert float(floats['agreement']) >= 99.9
  assert float(int8['accuracy']) >= float(floats['accuracy']) - 0.5
  assert (int(int8['bytes'].replace(',', '')) <
          0.3 * int(floats['bytes'].replace(',', '')))

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
  answers = {}
  for model in ('export', 'export/model.tflite', 'export/model_int8.tflite'):
    process = subprocess.run(
        [sys.executable, '-m', 'mnist_dist.predict',
         f'--model={os.path.join(workdir, model)}', *names], cwd=tmp_path,
        capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    print(f'--model=WORKDIR/{model}:', process.stdout.replace('\n', ' '))
    answers[model] = process.stdout
    read = [int(line.split(': ')[1].split()[0])
            for line in process.stdout.splitlines()]
    assert sum(d == r for d, r in zip(range(10), read, strict=True)) >= 8, (
        process.stdout)
  # The same preprocessing: the float model's answers are the SavedModel's.
  assert answers['export/model.tflite'] == answers['export']
