"""The geometry of the distortions."""

import numpy as np
import tensorflow as tf

from mnist_dist.data import augment

_SQUARE = np.zeros((1, 28, 28), np.uint8)
_SQUARE[0, 12:16, 12:16] = 200  # A centred square.


def _moved(images, angle=0.0, zoom=0.0, dx=0.0, dy=0.0, displacement=None):
  return augment.transform(tf.constant(images),
                           tf.constant([[angle, zoom, dx, dy]]),
                           displacement).numpy()[0]


def test_no_distortion_is_the_identity():
  np.testing.assert_array_equal(_moved(_SQUARE), _SQUARE[0])


def test_whole_pixel_shifts_are_exact():
  # +x moves right, +y moves down; what leaves the image is gone.
  np.testing.assert_array_equal(_moved(_SQUARE, dx=3, dy=-2),
                                np.roll(_SQUARE[0], (-2, 3), axis=(0, 1)))
  assert _moved(_SQUARE, dx=20).sum() == 0


def test_a_quarter_turn_takes_a_bar_above_the_centre_to_one_side():
  bar = np.zeros((1, 28, 28), np.uint8)
  bar[0, 2:6, 13:15] = 200
  turned = np.argwhere(_moved(bar, angle=np.pi / 2) > 100)
  assert set(turned[:, 0]) <= {13, 14}
  assert turned[:, 1].min() > 20 or turned[:, 1].max() < 7, turned


def test_zoom_is_about_the_centre():
  rows, cols = np.nonzero(_moved(_SQUARE, zoom=0.5) > 100)
  assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (6, 6)
  assert rows.min() + rows.max() == cols.min() + cols.max() == 27


def test_a_uniform_displacement_is_a_shift_the_other_way():
  # The field says where each output pixel reads: +2 reads from the right.
  field = np.zeros((1, 28, 28, 2), np.float32)
  field[..., 0] = 2.0
  np.testing.assert_array_equal(_moved(_SQUARE, displacement=field),
                                np.roll(_SQUARE[0], -2, axis=1))


def test_elastic_field_is_smooth_and_scaled_by_alpha():
  noise = tf.random.stateless_uniform([4, 28, 28, 2], [0, 1], -1, 1)
  field = augment.elastic_displacement(noise, alpha=30.0, sigma=4.0).numpy()
  doubled = augment.elastic_displacement(noise, alpha=60.0, sigma=4.0).numpy()
  np.testing.assert_allclose(doubled, 2 * field, rtol=1e-5)
  # Neighbouring pixels move together (smooth), unlike the raw noise.
  def roughness(f):
    return np.abs(np.diff(f, axis=2)).mean() / np.abs(f).mean()
  assert roughness(field) < 0.25 < 1 < roughness(noise.numpy())
  assert 0.3 < np.abs(field).max() < 10  # Pixels, not tens of them.
