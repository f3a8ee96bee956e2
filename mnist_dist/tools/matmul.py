"""How fast this machine multiplies matrices: the ceiling a training step has.

`matmul_gflops` times a large square matrix product in a dtype, the best of
a few tries: what the device's vector or matrix units sustain on the
friendliest kernel there is, so a practical ceiling for a training step in
that dtype. `mnist-dist-selftest` reports it beside conv_bn's examples/s;
benchmarks/flops.py and benchmarks/throughput.py put a config's achieved
GFLOP/s against it.
"""

import time

import tensorflow as tf

MATMUL_SIZE = 2048
# The dtypes whose matmul rate the benchmarks report.
MATMUL_DTYPES = ('float32', 'bfloat16')


def matmul_gflops(dtype: str, *, size: int = MATMUL_SIZE, tries: int = 3,
                  seconds: float = 1.0) -> float:
  """GFLOP/s of a [size, size] x [size, size] product in dtype: the best of
  `tries` timings of about `seconds` each, after a warm-up. On the current
  device scope (`with tf.device(...)`), else TensorFlow's default device."""
  a = tf.random.stateless_uniform([size, size], seed=[0, 1], dtype=tf.float32)
  a = tf.cast(a, dtype)

  @tf.function
  def products(count):
    # Each product feeds the next, so none can be skipped or overlapped away.
    x = a
    for _ in tf.range(count):
      x = tf.matmul(x, a) * tf.cast(1 / size, dtype)
    return x[0, 0]

  flops = 2 * size**3
  products(tf.constant(1)).numpy()  # Trace and warm up.
  start = time.perf_counter()
  products(tf.constant(1)).numpy()
  count = max(1, round(seconds / (time.perf_counter() - start)))
  best = float('inf')
  for _ in range(tries):
    start = time.perf_counter()
    products(tf.constant(count)).numpy()
    best = min(best, (time.perf_counter() - start) / count)
  return flops / best / 1e9


def matmul_rates() -> dict[str, float]:
  """{dtype: GFLOP/s} for MATMUL_DTYPES, rounded."""
  return {dtype: round(matmul_gflops(dtype)) for dtype in MATMUL_DTYPES}
