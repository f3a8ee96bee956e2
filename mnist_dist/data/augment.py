"""Random, seeded distortions of training images, in TensorFlow ops.

An affine part (rotation and zoom about the centre, then a shift) and an
optional elastic part (Simard et al. 2003: a random displacement field,
smoothed by a Gaussian), combined into one map from each output pixel to where
it is read in the input, then sampled bilinearly, zero outside the image. One
resampling, not one per distortion, so strokes blur once.

The random numbers of global batch k are drawn from (seed, k), one row per
example of the *global* batch; each input pipeline transforms its slice. So an
augmented run sees the same images on any number of replicas, hosts or
restarts, like an unaugmented one.
"""

import math

import tensorflow as tf

_STREAM = 1  # Folded into the seed: never the shuffle's random numbers.
SIZE = 28


def enabled(augment_config) -> bool:
  return bool(augment_config and (
      augment_config.max_shift or augment_config.max_rotation or
      augment_config.max_scale or augment_config.elastic_alpha))


def random_draws(augment_config, *, seed, step,
                 size: int) -> tuple[tf.Tensor, ...]:
  """The random numbers of one global batch of `size`, a function of step.

  Returns (affine,) or, with elastic_alpha, (affine, noise): affine is
  [size, 4] of (angle in radians, zoom - 1, shift x, shift y in pixels),
  noise [size, 28, 28, 2] uniform in [-1, 1], which `apply` smooths.
  """
  key = tf.random.experimental.stateless_fold_in(
      tf.stack([tf.cast(seed, tf.int64), _STREAM]), step)
  unit = tf.random.stateless_uniform([size, 4], key, minval=-1, maxval=1)
  affine = unit * [math.radians(augment_config.max_rotation),
                   augment_config.max_scale, augment_config.max_shift,
                   augment_config.max_shift]
  if not augment_config.elastic_alpha:
    return (affine,)
  noise_key = tf.random.experimental.stateless_fold_in(key, 1)
  return affine, tf.random.stateless_uniform([size, SIZE, SIZE, 2], noise_key,
                                             minval=-1, maxval=1)


def apply(images: tf.Tensor, draws, augment_config) -> tf.Tensor:
  """Distorts uint8 [N, 28, 28] images by their rows of `random_draws`."""
  affine, *noise = draws
  displacement = None
  if noise:
    displacement = elastic_displacement(
        noise[0], alpha=augment_config.elastic_alpha,
        sigma=augment_config.elastic_sigma)
  return transform(images, affine, displacement)


def elastic_displacement(noise: tf.Tensor, *, alpha: float,
                         sigma: float) -> tf.Tensor:
  """alpha * noise smoothed by a Gaussian of sigma pixels: [N, H, W, 2]."""
  radius = math.ceil(3 * sigma)
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * (taps / sigma)**2)
  kernel /= tf.reduce_sum(kernel)
  # Separable: along rows, then along columns, each channel on its own.
  for shape in ([-1, 1, 1, 1], [1, -1, 1, 1]):
    noise = tf.nn.depthwise_conv2d(
        noise, tf.tile(tf.reshape(kernel, shape), [1, 1, 2, 1]),
        strides=[1, 1, 1, 1], padding='SAME')
  return alpha * noise


def transform(images: tf.Tensor, affine: tf.Tensor,
              displacement: tf.Tensor | None = None) -> tf.Tensor:
  """Rotates and zooms about the centre, shifts, then displaces; uint8 out.

  affine: [N, 4] of (angle in radians, zoom - 1, shift x, shift y in pixels);
  +x moves right, +y down. displacement: [N, H, W, 2] pixels (x, y) added to
  where each output pixel reads, or None.
  """
  height, width = images.shape[1], images.shape[2]
  angle, zoom, dx, dy = (a[:, None, None] for a in tf.unstack(affine, axis=1))
  cx, cy = (width - 1) / 2, (height - 1) / 2
  y, x = tf.meshgrid(tf.range(height, dtype=tf.float32),
                     tf.range(width, dtype=tf.float32), indexing='ij')
  # The inverse of "rotate and zoom about the centre, then shift": where in
  # the input each output pixel comes from.
  u, v = x - cx - dx, y - cy - dy
  cos, sin = tf.cos(angle) / (1 + zoom), tf.sin(angle) / (1 + zoom)
  source_x = cos * u + sin * v + cx
  source_y = -sin * u + cos * v + cy
  if displacement is not None:
    source_x += displacement[..., 0]
    source_y += displacement[..., 1]
  return _bilinear(tf.cast(images, tf.float32), source_x, source_y)


def _bilinear(images, x, y):
  """images [N, H, W] read at float coordinates [N, H, W]; 0 outside."""
  height, width = images.shape[1], images.shape[2]
  flat = tf.reshape(images, [-1, height * width])
  x0, y0 = tf.floor(x), tf.floor(y)
  wx, wy = x - x0, y - y0

  def read(row, col):
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    index = (tf.cast(tf.clip_by_value(row, 0, height - 1), tf.int32) * width +
             tf.cast(tf.clip_by_value(col, 0, width - 1), tf.int32))
    values = tf.gather(flat, tf.reshape(index, [tf.shape(index)[0], -1]),
                       batch_dims=1)
    return tf.where(inside, tf.reshape(values, tf.shape(row)), 0.0)

  out = ((1 - wy) * ((1 - wx) * read(y0, x0) + wx * read(y0, x0 + 1)) +
         wy * ((1 - wx) * read(y0 + 1, x0) + wx * read(y0 + 1, x0 + 1)))
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
