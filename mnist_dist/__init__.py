"""mnist_dist: the codelab's MNIST models, trained on any tf.distribute strategy."""

import os
import sys

# TensorFlow's default CPU allocator returns each freed tensor to malloc,
# which hands large blocks back to the kernel: every step then faults its
# activations' pages in again (fast.py here: 6.1 million page faults, 19 s of
# system time in a 34 s run). The BFC allocator keeps and reuses them (0.45
# million, 2.5 s; docs/performance.md). TensorFlow reads this when it makes
# its CPU allocator, at its first op, so it is set on import of the package,
# before that; a value of the user's own wins.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

# TensorFlow's x86 Linux builds carry oneDNN's kernels but turn them on by
# default only on CPUs with AVX512_VNNI, AVX512_BF16, AMX and the like (TF
# 2.9's release notes); on an AVX2-only CPU a convolution's gradient then
# runs on Eigen's kernels, half as fast: fast.py's step took 63 ms on them,
# 30 ms on oneDNN's (docs/performance.md). TensorFlow reads this once, when
# it is imported, so it only takes effect if this package is imported first
# (as `python -m mnist_dist.main` and the other entry points do); a value of
# the user's own wins. Not on other processors: not measured there.
if sys.platform == 'linux' and os.uname().machine == 'x86_64':
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
