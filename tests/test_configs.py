"""The five configs hold the codelab's recipes and build its architectures;
every config loads and is checked with ml_collections alone."""

import json
import subprocess
import sys

import keras
import pytest

from helpers import load_config
from helpers import ROOT
from mnist_dist import config as config_lib
from mnist_dist.base import errors
from mnist_dist.data import input_pipeline
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.modeling import models
from mnist_dist.modeling import optimizers

# config: (batch, optimizer, lr, decay per epoch, trainable parameters,
#          layer kinds, logits excluded: the scaling is models.model_input)
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
  assert layers == [*kinds, 'Dense']
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
    assert model(keras.ops.zeros((2, 28, 28))).dtype == 'float32'
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


@pytest.mark.parametrize('key,builder_names', [
    ('model.name', models.NAMES),
    ('distribution.strategy', strategy_lib.NAMES),
    ('optimizer.name', optimizers.NAMES),
    ('optimizer.schedule', optimizers.SCHEDULE_NAMES),
    ('data.source', input_pipeline.NAMES),
])
def test_the_configs_choices_are_the_names_their_builders_build(
    key, builder_names):
  # Declared in the config (which imports no builder), built by the
  # builder's own table: the same names, in the same order.
  assert config_lib.CHOICES[key] == builder_names
  config = config_lib.default_config()
  section, name = key.split('.')
  for value in builder_names:
    config[section][name] = value
    config_lib.validate(config)
  config[section][name] = 'nope'
  with pytest.raises(errors.ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value) == (
      f"{key}='nope' is not one of: {', '.join(builder_names)}")


# Loads every config as `--config=NAME` does (its file, by ml_collections'
# flag), checks it, and prints the TensorFlow and Keras modules imported.
_LOAD_EVERY_CONFIG = """
import json, sys
from absl import flags
from ml_collections import config_flags
from mnist_dist import config as config_lib
from mnist_dist.base import cli
for name in cli.config_names():
  config_flags.DEFINE_config_file(name, cli.config_path(name))
flags.FLAGS([sys.argv[0]])
found = {}
for name in cli.config_names():
  config = flags.FLAGS[name].value
  config_lib.validate(config)
  config.outputs.profile_steps = '2,3'
  # A model module that imports Keras, which only building it may import.
  config.model.name, config.model.width = 'keras:Sequential', 1
  config_lib.validate(config)
  found[name] = sorted(module for module in sys.modules
                       if module.split('.')[0] in ('tensorflow', 'keras'))
print(json.dumps(found))
"""


def test_every_config_loads_and_is_checked_without_tensorflow():
  process = subprocess.run(
      [sys.executable, '-c', _LOAD_EVERY_CONFIG], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  found = json.loads(process.stdout)
  assert sorted(found) == sorted(
      ['best', 'conv', 'conv_bn', 'dense', 'dense_dropout', 'dense_softmax',
       'fast', 'fast_995'])
  assert found == {name: [] for name in found}


@pytest.mark.parametrize('name', ['module:', ':function', 'a b:f', 'm:f.g',
                                  'package..module:f'])
def test_an_own_model_name_of_another_form_is_refused(name):
  config = config_lib.default_config()
  config.model.name = name
  with pytest.raises(errors.ConfigError,
                     match='nor package.module:function'):
    config_lib.validate(config)


def test_an_own_model_is_imported_when_built_not_when_checked():
  config = config_lib.default_config()
  config.model.name = 'no_such_module:f'
  config_lib.validate(config)
  with pytest.raises(errors.ConfigError, match='cannot import it'):
    models.create_model(config.model)


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
  assert config.model.name == 'conv_pool' and config.train.epochs == 4
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
