"""The codelab's five models, from a 1-layer softmax net to conv + batch norm,
and a deeper conv net for configs/best.py.

Every model takes uint8 images [N, 28, 28], scales them by 1/256 on the device
(as the codelab does) and returns logits [N, 10] in float32: the loss applies
the softmax itself, in a numerically stable way, and only places that show or
export probabilities apply it to the output.
"""

import keras
from keras import layers

NUM_CLASSES = 10


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


# model.name -> the builder of the layers between the scaled input and the
# logits layer. The one list of the models: config.validate checks against it.
BUILDERS = {
    'dense_softmax': _dense_softmax,
    'dense': _dense,
    'dense_dropout': _dense_dropout,
    'conv': _conv,
    'conv_bn': _conv_bn,
    'conv_bn_deep': _conv_bn_deep,
}
NAMES = tuple(BUILDERS)


def create_model(model_config) -> keras.Model:
  """Builds config.model.name; call it inside the strategy's scope."""
  hidden = BUILDERS[model_config.name](model_config)
  return keras.Sequential(
      [keras.Input((28, 28), dtype='uint8'), layers.Rescaling(1 / 256),
       *hidden,
       # Float32 logits even under a mixed precision policy.
       layers.Dense(NUM_CLASSES, dtype='float32', name='logits')],
      name=model_config.name)
