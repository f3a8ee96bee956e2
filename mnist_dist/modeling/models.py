"""The codelab's five models, from a 1-layer softmax net to conv + batch norm,
a deeper conv net for configs/best.py, and the GPU record recipe's small net
for configs/fast.py.

Every model, built-in or the user's, takes float32 images [N, 28, 28] with
pixels in [0, 1] and returns logits [N, 10] in float32: the loss applies the
softmax itself, in a numerically stable way, and only places that show or
export probabilities apply it to the output. The images travel as uint8 (a
quarter of float32's host memory and host-to-device traffic) and become the
model's input on the device, in `model_input`, which the training and
evaluation steps and the export's graph all call.

A model of your own: `--config.model.name=package.module:function`, where
function(config.model) returns a Keras model of the same contract (float32
images [N, 28, 28] in [0, 1] in, 10 logits out; docs/design.md has an
example): a plain `keras.Sequential` of a Keras tutorial. It is imported
from the Python path, or the folder the trainer is started in, and gets
what the built-in ones get: every strategy, checkpoints and exact resume,
the export (which holds its whole graph), predict and LiteRT.
"""

import importlib
import os
import sys

import keras
from keras import layers
import numpy as np

from mnist_dist.base.errors import ConfigError

NUM_CLASSES = 10
# The codelab's factor. 1/255 would round; 1/256 is a power of two.
PIXEL_SCALE = 1 / 256


def model_input(images):
  """What every model is called on: uint8 images [N, 28, 28] as float32 in
  [0, 1]. Pixel k becomes k/256 (255 becomes 0.99609375), exact in float32
  and in bfloat16, whose 8 significant bits hold any k below 256.

  The one place the pixels are scaled: on the device, inside the train and
  eval steps' graphs and the export's. Exact, so the built-in models train
  bit for bit as they did with the scaling as their first layer, and a
  checkpoint of that layout (whose Rescaling layer had no variables)
  restores into them as it is (tests/test_model_input.py).
  """
  return keras.ops.cast(images, 'float32') * PIXEL_SCALE


def _dense_softmax(config):
  del config
  return [layers.Flatten()]


def _dense(config):
  del config
  return [layers.Flatten(), layers.Dense(200, activation='relu'),
          layers.Dense(60, activation='relu')]


def _dense_dropout(config):
  stack = [layers.Flatten()]
  for width in (200, 100, 60):
    stack += [layers.Dense(width, activation='relu'),
              layers.Dropout(config.dropout)]
  return stack


_CONVS = ((12, 3, 1), (24, 6, 2), (32, 6, 2))  # (filters, kernel, stride)


def _convs(config):
  """(filters, kernel, stride) of each conv layer, widened by model.width."""
  return [(filters * config.width, kernel, stride)
          for filters, kernel, stride in _CONVS]


def _conv(config):
  stack = [layers.Reshape((28, 28, 1))]
  for filters, kernel, stride in _convs(config):
    stack.append(layers.Conv2D(filters, kernel, strides=stride, padding='same',
                               activation='relu'))
  return stack + [layers.Flatten(), layers.Dense(200, activation='relu')]


def _bn_relu(config):
  # Batch norm's offset replaces the bias; relu makes its scale redundant.
  # synchronized: statistics of the global batch, all-reduced over replicas.
  return [layers.BatchNormalization(
      center=True, scale=False, synchronized=config.sync_batch_norm),
          layers.Activation('relu')]


def _conv_bn(config):
  stack = [layers.Reshape((28, 28, 1))]
  for filters, kernel, stride in _convs(config):
    stack += [layers.Conv2D(filters, kernel, strides=stride, padding='same',
                            use_bias=False), *_bn_relu(config)]
  return stack + [layers.Flatten(), layers.Dense(200, use_bias=False),
                  *_bn_relu(config), layers.Dropout(config.dropout)]


def _conv_pool(config):
  """tuomaso/train_mnist_fast's net (benchmarks/record_recipe.py): a 5x5 and
  a 3x3 conv, each max-pooled before its relu (the same result for a quarter
  of the relu's work), and Dense 256. 7.5 MFLOP a training example, a third
  of conv_bn's: no batch norm, and the pooling shrinks the maps early."""
  stack = [layers.Reshape((28, 28, 1))]
  for filters, kernel in ((24, 5), (32, 3)):
    stack += [layers.Conv2D(filters * config.width, kernel),
              layers.MaxPooling2D(2), layers.Activation('relu')]
  return stack + [layers.Flatten(), layers.Dense(256, activation='relu')]


# (filters, kernel, stride, padding): 3x3 pairs, then a strided 5x5 in place
# of pooling, twice, and a 4x4 over what is left (a widely used Kaggle MNIST
# design, here with batch norm after every conv).
_DEEP_CONVS = ((32, 3, 1, 'same'), (32, 3, 1, 'same'), (32, 5, 2, 'same'),
               (64, 3, 1, 'same'), (64, 3, 1, 'same'), (64, 5, 2, 'same'),
               (128, 4, 1, 'valid'))


def _conv_bn_deep(config):
  stack = [layers.Reshape((28, 28, 1))]
  for filters, kernel, stride, padding in _DEEP_CONVS:
    stack += [layers.Conv2D(filters * config.width, kernel, strides=stride,
                            padding=padding, use_bias=False),
              *_bn_relu(config)]
  return stack + [layers.Flatten(), layers.Dropout(config.dropout)]


# model.name -> the builder of the layers between the input and the
# logits layer. Its names are config.MODELS (tests/test_configs.py).
BUILDERS = {
    'dense_softmax': _dense_softmax,
    'dense': _dense,
    'dense_dropout': _dense_dropout,
    'conv': _conv,
    'conv_bn': _conv_bn,
    'conv_bn_deep': _conv_bn_deep,
    'conv_pool': _conv_pool,
}
NAMES = tuple(BUILDERS)


def is_own(name: str) -> bool:
  """Whether model.name names a model of the user's: `module:function`."""
  return ':' in name


def own_builder(name: str):
  """The function `module:function` names; ConfigError if there is none."""
  module_name, _, function_name = name.partition(':')
  if os.getcwd() not in sys.path:  # As `python -m` would have it.
    sys.path.append(os.getcwd())
  try:
    builder = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f'model.name={name!r}: cannot import it ({e})') from e
  if not callable(builder):
    raise ConfigError(f'model.name={name!r} is not a function')
  return builder


def _own_model(model_config) -> keras.Model:
  """The user's model, checked against the contract on a batch of two."""
  model = own_builder(model_config.name)(model_config)
  if not isinstance(model, keras.Model):
    raise ConfigError(f'model.name={model_config.name!r} returned '
                      f'{type(model).__name__}, not a keras.Model')
  try:
    shape = tuple(model(model_input(np.zeros((2, 28, 28), np.uint8))).shape)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'model.name={model_config.name!r} cannot take float32 '
                      f'images [N, 28, 28] in [0, 1]: '
                      f'{" ".join(str(e).split())}') from e
  if shape != (2, NUM_CLASSES):
    raise ConfigError(f'model.name={model_config.name!r} maps 2 images to '
                      f'{shape}, not (2, {NUM_CLASSES}) logits')
  return model


def create_model(model_config) -> keras.Model:
  """Builds config.model.name; call it inside the strategy's scope and on
  `model_input(images)`."""
  if is_own(model_config.name):
    return _own_model(model_config)
  hidden = BUILDERS[model_config.name](model_config)
  return keras.Sequential(
      [keras.Input((28, 28)), *hidden,
       # Float32 logits even under a mixed precision policy.
       layers.Dense(NUM_CLASSES, dtype='float32', name='logits')],
      name=model_config.name)
