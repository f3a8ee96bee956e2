"""mnist_dist: the codelab's MNIST models, trained on any tf.distribute strategy."""
