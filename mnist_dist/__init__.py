"""mnist_dist: the codelab's MNIST models, trained on any tf.distribute strategy."""

import os

# TensorFlow's default CPU allocator returns each freed tensor to malloc,
# which hands large blocks back to the kernel: every step then faults its
# activations' pages in again (fast.py here: 6.1 million page faults, 19 s of
# system time in a 34 s run). The BFC allocator keeps and reuses them (0.45
# million, 2.5 s; docs/performance.md). TensorFlow reads this when it makes
# its CPU allocator, at its first op, so it is set on import of the package,
# before that; a value of the user's own wins.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')
