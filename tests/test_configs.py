"""The five configs hold the codelab's recipes and build its architectures."""

import keras
import pytest

from helpers import load_config
from mnist_dist import config as config_lib
from mnist_dist.base import errors
from mnist_dist.data import input_pipeline
from mnist_dist.modeling import models
from mnist_dist.modeling import optimizers
from mnist_dist.distribution import strategy as strategy_lib

# config: (batch, optimizer, lr, decay per epoch, trainable parameters,
#          layer kinds after the input scaling, logits excluded)
LADDER = {
    'dense_softmax': (128, 'sgd', 0.01, 1.0, 7_850, ['Flatten']),
    'dense': (128, 'adam', 0.001, 1.0, 169_670,
              ['Flatten', 'Dense', 'Dense']),
    'dense_dropout': (128, 'adam', 0.01, 0.6, 183_770,
                      ['Flatten'] + ['Dense', 'Dropout'] * 3),
    'conv': (128, 'adam', 0.01, 0.6, 354_002,
             ['Reshape', 'Conv2D', 'Conv2D', 'Conv2D', 'Flatten', 'Dense']),
    'conv_bn': (64, 'adam', 0.01, 0.666, 354_002,
                ['Reshape'] + ['Conv2D', 'BatchNormalization',
                               'Activation'] * 3 +
                ['Flatten', 'Dense', 'BatchNormalization', 'Activation',
                 'Dropout']),
}


@pytest.mark.parametrize('name', sorted(LADDER))
def test_config_matches_the_codelab(name):
  batch, optimizer, lr, decay, parameters, kinds = LADDER[name]
  config = load_config(name)
  config_lib.validate(config)
  assert config.model.name == name
  assert config.train.epochs == 10
  assert config.train.global_batch_size == batch
  assert config.optimizer.name == optimizer
  assert config.optimizer.learning_rate == lr
  assert config.optimizer.decay_rate == decay
  model = models.create_model(config.model)
  assert sum(keras.ops.size(w) for w in model.trainable_weights) == parameters
  layers = [type(layer).__name__ for layer in model.layers]
  assert layers == ['Rescaling', *kinds, 'Dense']
  assert model.layers[-1].dtype_policy.compute_dtype == 'float32'


def test_conv_bn_is_the_default_and_uses_dropout_0_3():
  config = load_config('conv_bn')
  assert config == config_lib.default_config()
  assert config.model.dropout == 0.3
  assert load_config('dense_dropout').model.dropout == 0.25


def test_logits_stay_float32_under_mixed_precision():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    model = models.create_model(load_config('conv_bn').model)
    assert model.layers[1].compute_dtype == 'bfloat16'
    assert model(keras.ops.zeros((2, 28, 28), 'uint8')).dtype == 'float32'
  finally:
    keras.mixed_precision.set_global_policy('float32')


@pytest.mark.parametrize('key,value,message', [
    ('model.name', 'resnet', "model.name='resnet' is not one of"),
    ('distribution.strategy', 'parameter_server', 'is not one of'),
    ('train.global_batch_size', 0, 'must be a positive number'),
    ('train.epochs', -1, 'must be a positive number'),
    ('model.dropout', 1.0, 'must be in'),
    ('model.width', 0, 'model.width=0 must be an integer'),
    ('data.augment.max_shift', -1.0, 'data.augment.max_shift=-1.0 must be'),
    ('data.augment.max_scale', 1.0, 'must be < 1'),
    ('train.label_smoothing', 1.0, 'train.label_smoothing=1.0 must be in'),
    ('train.ema_decay', 1.0, 'train.ema_decay=1.0 must be in'),
    ('optimizer.schedule', 'step', "optimizer.schedule='step' is not one of"),
    ('optimizer.warmup_epochs', 1.0, 'is for optimizer.schedule=cosine'),
    ('optimizer.beta_1', 1.0, 'optimizer.beta_1=1.0 must be in'),
    ('optimizer.beta_2', -0.1, 'optimizer.beta_2=-0.1 must be in'),
    ('outputs.saved_model', False, 'need outputs.saved_model=True'),
])
def test_bad_values_are_refused_by_name(key, value, message):
  config = config_lib.default_config()
  config.outputs.litert = True  # Refused only with saved_model=False.
  *sections, name = key.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[name] = value
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(config)


@pytest.mark.parametrize('key,module_names', [
    ('model.name', models.NAMES),
    ('distribution.strategy', strategy_lib.NAMES),
    ('optimizer.name', optimizers.NAMES),
    ('optimizer.schedule', optimizers.SCHEDULE_NAMES),
    ('data.source', input_pipeline.NAMES),
])
def test_choices_are_the_lists_of_the_modules_that_build_them(key,
                                                              module_names):
  config = config_lib.default_config()
  section, name = key.split('.')
  for value in module_names:
    config[section][name] = value
    config_lib.validate(config)
  config[section][name] = 'nope'
  with pytest.raises(errors.ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value) == (
      f"{key}='nope' is not one of: {', '.join(module_names)}")


def test_every_model_name_builds():
  config = config_lib.default_config()
  for name in models.NAMES:
    config.model.name = name
    assert models.create_model(config.model).output_shape == (None, 10), name


@pytest.mark.parametrize('replicas,steps_per_epoch,message', [
    (3, 937, 'not divisible by the 3 replicas'),
    (1, 50, 'larger than an epoch'),
])
def test_run_checks(replicas, steps_per_epoch, message):
  config = config_lib.default_config()
  config.train.steps_per_loop = 100
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.check_against_run(config, num_replicas=replicas,
                                 steps_per_epoch=steps_per_epoch)


def test_fast_config_is_chosen_on_a_validation_split():
  config = load_config('fast')
  config_lib.validate(config)
  assert config.model.name == 'conv_pool' and config.train.epochs == 1
  assert config.data.validation_split == 5000
  # The record recipe's Adam and one cycle (a warm-up, then the cosine).
  assert (config.optimizer.beta_1, config.optimizer.beta_2) == (0.7, 0.9)
  assert config.optimizer.schedule == 'cosine'
  assert config.optimizer.warmup_epochs == 0.3


def test_fast_995_config_is_chosen_on_a_validation_split():
  config = load_config('fast_995')
  config_lib.validate(config)
  assert config.model.name == 'conv_pool' and config.train.epochs == 8
  assert config.data.validation_split == 5000
  assert config.train.precision == 'mixed_bfloat16_if_native'


def test_adam_betas_are_refused_for_sgd():
  config = load_config('dense_softmax')  # SGD.
  config.optimizer.beta_1 = 0.7
  with pytest.raises(errors.ConfigError, match='are for optimizer.name=adam'):
    config_lib.validate(config)


def test_width_is_only_for_the_conv_models():
  config = load_config('dense')
  config.model.width = 2
  with pytest.raises(errors.ConfigError, match="not 'dense'"):
    config_lib.validate(config)


def test_cosine_warmup_must_leave_epochs_to_decay():
  config = config_lib.default_config()
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = config.train.epochs
  with pytest.raises(errors.ConfigError, match='leaves no epochs'):
    config_lib.validate(config)


@pytest.mark.parametrize('name,filters', [
    ('conv', [12, 24, 32]), ('conv_bn', [12, 24, 32]),
    ('conv_bn_deep', [32, 32, 32, 64, 64, 64, 128])])
def test_width_multiplies_every_conv_layer(name, filters):
  config = config_lib.default_config()
  config.model.name = name
  for width in (1, 3):
    config.model.width = width
    model = models.create_model(config.model)
    assert model.output_shape == (None, 10)
    assert [layer.filters for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D)] == [
                f * width for f in filters]


def test_best_config_is_chosen_on_a_validation_split_with_its_levers_on():
  config = load_config('best')
  config_lib.validate(config)
  assert config.data.validation_split == 5000
  assert config.data.augment.max_shift and config.data.augment.max_rotation
  assert config.train.ema_decay and config.train.label_smoothing
  assert config.optimizer.schedule == 'cosine'
