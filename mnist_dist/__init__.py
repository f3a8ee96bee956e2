"""The codelab's MNIST models, trained on any tf.distribute strategy.

Importing it changes nothing in the process: the commands set the environment
TensorFlow reads as it loads (`base.console.import_tensorflow`), and a program
of the API's calls that first too (or sets the variables itself).
"""
