"""The benchmarks: each a command (`python -m benchmarks.NAME`).

Importing this package sets TensorFlow's environment as mnist_dist's own
commands do (`console.TF_ENVIRONMENT`: the BFC allocator, oneDNN's kernels),
before any benchmark imports TensorFlow, so that what is measured, in this
process and in the trainers and baselines it starts, is what users run.
"""

from mnist_dist.base import console

console.set_tf_environment()
