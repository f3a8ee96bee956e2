"""`python -m mnist_dist.selftest`, as the README and the launchers run it: the
command lives in mnist_dist/tools/selftest.py (`mnist-dist-selftest`)."""

from mnist_dist.tools import selftest

if __name__ == '__main__':
  selftest.run()
