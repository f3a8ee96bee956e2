"""`python -m mnist_dist.predict`, as the README and the launchers run it: the
command lives in mnist_dist/tools/predict.py (`mnist-dist-predict`)."""

from mnist_dist.tools import predict

if __name__ == '__main__':
  predict.run()
