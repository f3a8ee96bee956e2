"""Image files from anyone, read within bounded memory and time, made gray.

`mnist-dist-predict` reads whatever a user or a web form hands it, so a file
is refused, with a reason, before it can cost much:

- more than MAX_FILE_BYTES: not read past that;
- empty, or not a PNG, JPEG, GIF, BMP or WebP image: Pillow reads dozens of
  other formats, each one more decoder to trust;
- more than MAX_PIXELS, said by the header alone, before anything is decoded:
  a PNG of a hundred kB can claim 30000x30000 pixels (a decompression bomb),
  gigabytes once decoded. Pillow's own guard (`Image.MAX_IMAGE_PIXELS`) is a
  global any program may change, and up to twice its limit it only warns;
  this limit is this module's;
- a JPEG of more than MAX_JPEG_SCANS scans, counted in its bytes before
  anything is decoded: each scan of a progressive JPEG is another pass over
  all of the image's coefficients, and a few bytes each, so a small file of
  thousands of scans takes minutes within the limits above. Encoders write
  at most a few dozen.

What passes is decoded once: its first frame only, and a JPEG at the
smallest scale of 1/2, 1/4 or 1/8 that keeps WORKING_SIZE pixels on a side
(its DCT allows that: a 50-megapixel photo decodes as 3 megapixels). Every
mode the five formats give becomes gray levels: palettes and transparency
(transparent parts are paper, white), CMYK, 16-bit grays, and phone photos
are turned upright as their EXIF orientation says.
"""

import io
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import JpegImagePlugin
from PIL import UnidentifiedImageError
import tensorflow as tf

from mnist_dist.base import paths

MAX_FILE_BYTES = 64 * 2**20
# A 50-megapixel phone photo (8160x6120) passes.
MAX_PIXELS = 50_000_000
# Larger pictures are reduced to this many pixels on their longer side first:
# the digit ends up 20 pixels high, and the reduction bounds the work after.
WORKING_SIZE = 1024
MAX_JPEG_SCANS = 100
FORMATS = ('PNG', 'JPEG', 'GIF', 'BMP', 'WEBP')

_NOT_AN_IMAGE = 'not a PNG, JPEG, GIF, BMP or WebP image'
_SIXTEEN_BIT_GRAYS = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')


def load(path: str) -> Image.Image:
  """The image at path (local or gs://), decoded: its first frame, loaded.

  Raises:
    ValueError: naming why the file cannot be used, without its path.
  """
  pieces, size = [], 0
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      # In pieces: one read of MAX_FILE_BYTES takes three times its memory,
      # which a file refused for its size should not cost.
      while piece := f.read(2**20):
        size += len(piece)
        if size > MAX_FILE_BYTES:
          raise ValueError(f'larger than {MAX_FILE_BYTES // 2**20} MiB')
        pieces.append(piece)
  except tf.errors.NotFoundError as e:
    raise ValueError('no such file') from e
  except tf.errors.OpError as e:
    raise ValueError(f'cannot read it: {paths.cause(e)}') from e
  if not size:
    raise ValueError('empty file')
  return decode(b''.join(pieces))


def decode(raw: bytes) -> Image.Image:
  """The image file's content, decoded: its first frame, loaded.

  Raises:
    ValueError: naming why the bytes cannot be used.
  """
  # Past Pillow's limit open() warns on stderr; the check below refuses such
  # an image in one line instead.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    try:
      image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except UnidentifiedImageError as e:
      raise ValueError(_NOT_AN_IMAGE) from e
    except Image.DecompressionBombError as e:
      # Past twice Pillow's limit (179 million pixels) open() refuses first.
      raise ValueError(
          f'more than the {MAX_PIXELS:,} pixels this reads') from e
    except Exception as e:  # pylint: disable=broad-except
      raise _undecodable(e) from e
  width, height = image.size
  if width * height > MAX_PIXELS:
    raise ValueError(f'{width}x{height} pixels: more than the {MAX_PIXELS:,} '
                     'this reads')
  if isinstance(image, JpegImagePlugin.JpegImageFile):  # MPO is one too.
    # Each scan starts with an SOS marker, whose two bytes the compressed
    # data never holds (a 0xFF there is followed by 0 or a restart code).
    # Metadata may (an EXIF thumbnail has scans of its own): an upper bound.
    scans = raw.count(b'\xff\xda')
    if scans > MAX_JPEG_SCANS:
      raise ValueError(f'a JPEG of {scans} scans: more than the '
                       f'{MAX_JPEG_SCANS} this decodes')
  # JPEG only (draft does nothing for the others): decode at a reduced scale.
  image.draft(image.mode, (WORKING_SIZE, WORKING_SIZE))
  try:
    image.load()  # The first frame of an animation.
  except Exception as e:  # pylint: disable=broad-except
    raise _undecodable(e) from e
  return image


def _undecodable(error: Exception) -> ValueError:
  # Damaged data raises OSError, SyntaxError, ValueError, EOFError,
  # struct.error..., depending on the format and where the damage is, from
  # open() (in the header) as from load().
  return ValueError(f'cannot decode ({error or type(error).__name__})')


def grayscale(image: Image.Image) -> np.ndarray:
  """The picture as gray levels, float32 [H, W] in 0..255, upright.

  Transparent parts are on white; at most WORKING_SIZE pixels on a side.
  Pillow keeps pixels of more than one band in 4 bytes: the conversions are
  ordered so that at most one such copy exists, none for an opaque picture.

  Raises:
    ValueError: its EXIF data cannot be read.
  """
  if image.mode in _SIXTEEN_BIT_GRAYS:
    # Scaled to 8 bits: Pillow's conversion to 'L' clips 16-bit values,
    # which makes all but the darkest grays white.
    image = image.convert('I').point(lambda value: value / 256).convert('L')
  # Every conversion below makes a new image, with the original's EXIF.
  if image.has_transparency_data:  # An alpha band, or a transparent color.
    if image.mode not in ('RGBA', 'LA'):
      image = image.convert('RGBA')  # Palettes and their transparency.
    gray = Image.new('L', image.size, 'white')
    gray.paste(image.convert('L'), mask=image.getchannel('A'))
    gray.info = image.info  # The EXIF, for exif_transpose.
  else:
    gray = image.convert('L')
  gray.thumbnail((WORKING_SIZE, WORKING_SIZE))
  try:
    upright = ImageOps.exif_transpose(gray)
  except Exception as e:  # pylint: disable=broad-except
    # Malformed EXIF raises about any kind of error while it is parsed.
    raise ValueError(f'cannot read its EXIF data ({e or type(e).__name__})'
                     ) from e
  return np.asarray(upright, np.float32)
