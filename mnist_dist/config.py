"""The config schema: every key a run reads, with its default, and its checks.

`default_config()` is the codelab's best model (`conv_bn`); the files in
`configs/` start from it and change what their model needs. Any key can be set
from the command line with `--config.a.b=value`; a key that is not here is
refused by ml_collections, so a typo never passes silently.

A config needs ml_collections only, as flax's and big_vision's do: loading
one, checking it (`validate`) or printing it imports no TensorFlow. So the
choices of the keys the builders read are declared here, and each builder
names the same choices in its own table (`models.BUILDERS`,
`strategy.FACTORIES`, `optimizers.OPTIMIZERS`, `optimizers.SCHEDULES`,
`input_pipeline.SOURCES`; tests/test_configs.py holds them equal). A model
of the user's own (`module:function`) is imported when it is built, not
here.
"""

import ml_collections

from mnist_dist.base.errors import ConfigError

# model.name, when not a `module:function` of the user's own.
MODELS = ('dense_softmax', 'dense', 'dense_dropout', 'conv', 'conv_bn',
          'conv_bn_deep', 'conv_pool')
# 'auto': create_strategy picks one of the others for the devices it finds.
STRATEGIES = ('auto', 'one_device', 'mirrored', 'multi_worker_mirrored',
              'tpu')
# 'auto': idx if data.dir is set, else tfds.
DATA_SOURCES = ('auto', 'idx', 'tfds', 'synthetic')
OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('exponential', 'cosine')
PRECISIONS = ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16',
              'mixed_bfloat16_if_native')
NONFINITE_LOSS = ('stop', 'skip')
JIT_COMPILE = ('auto', 'on', 'off')

# {key: the values it may take}, in the order `validate` checks them.
CHOICES = {
    'model.name': MODELS,
    'distribution.strategy': STRATEGIES,
    'data.source': DATA_SOURCES,
    'optimizer.name': OPTIMIZERS,
    'optimizer.schedule': SCHEDULES,
    'train.precision': PRECISIONS,
    'train.jit_compile': JIT_COMPILE,
    'train.on_nonfinite_loss': NONFINITE_LOSS,
}

TRAIN_EXAMPLES = 60_000
EVAL_EXAMPLES = 10_000


def default_config() -> ml_collections.ConfigDict:
  """Returns the full config with the defaults of `configs/conv_bn.py`."""
  config = ml_collections.ConfigDict()
  # One seed makes a OneDevice CPU run repeatable: weights, dropout, data order.
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  # One of MODELS, or 'package.module:function' for a model of your own
  # (mnist_dist/modeling/models.py says what the function returns).
  config.model.name = 'conv_bn'
  config.model.dropout = 0.3
  # Batch statistics over the global batch instead of each replica's share.
  config.model.sync_batch_norm = False
  # The conv models: filters of every conv layer times this (1: the codelab's
  # 12, 24, 32 for conv and conv_bn).
  config.model.width = 1

  config.data = ml_collections.ConfigDict()
  config.data.source = 'auto'
  # Folder with the four IDX files (plain or .gz; local or gs://).
  config.data.dir = ''
  # Where TFDS keeps its prepared data ('' is TFDS's own default).
  config.data.tfds_dir = ''
  # N > 0: train on the first N training examples only (quick tries, tests).
  config.data.train_examples = 0
  # N > 0: hold the last N training images out as a validation set. Every
  # epoch is then evaluated on it, and the test set once, at the end. 0: the
  # test set is evaluated every epoch, as in the codelab.
  config.data.validation_split = 0
  # Random, seeded distortions of every training image, drawn per example and
  # step in the tf.data pipeline (so under every strategy): a shift of up to
  # max_shift pixels along each axis, a rotation of up to max_rotation
  # degrees, a zoom of up to max_scale (0.1: 90% to 110%), and an elastic
  # displacement field of scale elastic_alpha pixels smoothed over
  # elastic_sigma pixels. 0 turns each off.
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.max_shift = 0.0
  config.data.augment.max_rotation = 0.0
  config.data.augment.max_scale = 0.0
  config.data.augment.elastic_alpha = 0.0
  config.data.augment.elastic_sigma = 4.0
  # Sizes of the random data of source=synthetic.
  config.data.synthetic_train_examples = TRAIN_EXAMPLES
  config.data.synthetic_eval_examples = EVAL_EXAMPLES

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 10
  config.train.global_batch_size = 64
  # k > 1: each update adds the gradients of k micro-batches of
  # global_batch_size / k, one after the other, for a global batch the
  # devices cannot hold at once (batch norm's statistics are then per
  # micro-batch). Steps, the schedule and checkpoints count updates.
  config.train.accumulation_steps = 1
  # Steps per call of the compiled loop; each call ends with one log line.
  # 0: auto, a whole epoch on TPU (host round trips are costly there), else 100.
  config.train.steps_per_loop = 0
  # Rounded up to a multiple of the replica count; padding is masked out.
  config.train.eval_batch_size = 1000
  # auto: mixed_bfloat16 on TPU, float32 elsewhere. mixed_bfloat16_if_native:
  # mixed_bfloat16 where the device multiplies bfloat16 natively (a TPU, a GPU
  # of compute capability 8.0+, a CPU with AVX512_BF16 or AMX), float32
  # elsewhere (mnist_dist/distribution/hardware.py).
  config.train.precision = 'auto'
  # XLA on the per-replica step: auto = on for TPU and GPU, off for CPU.
  config.train.jit_compile = 'auto'
  # A NaN/Inf loss: 'stop' the run (exit code 3, last good checkpoint kept),
  # or 'skip' the step (no update; counted as nonfinite_steps in metrics).
  config.train.on_nonfinite_loss = 'stop'
  # > 0: train on targets of 1 - label_smoothing for the true class and
  # label_smoothing / 10 for every class (the reported loss is the plain one).
  config.train.label_smoothing = 0.0
  # > 0: keep an exponential moving average of the model's weights and
  # batch-norm statistics, updated after every step with this decay (less at
  # first: min(decay, (1 + n) / (10 + n)) at update n). Evaluations, the
  # export and the returned model use the average.
  config.train.ema_decay = 0.0
  # > 0: stop after the first evaluation at or above this accuracy (on the
  # validation set when there is one).
  config.train.stop_at_accuracy = 0.0

  # WORKDIR/checkpoints: saved every N steps (at the first loop end past each
  # multiple), after every epoch's evaluation, and on SIGTERM/SIGINT.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3
  # Write checkpoints in the background (mnist_dist/checkpoints.py): a save
  # holds training up only to copy the variables to host memory; a
  # checkpoint is listed once whole, and the end of training, a stop (exit
  # 75) and a lost worker's message wait for the write in flight. False
  # writes on the training thread, as TensorFlow's savers do by default.
  config.checkpoint.async_save = True

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 0.01
  # exponential: lr = learning_rate * decay_rate ** epoch (the codelab).
  # cosine: from 0 up to learning_rate linearly over warmup_epochs, then down
  # to 0 along half a cosine by the end of the last epoch.
  config.optimizer.schedule = 'exponential'
  # For exponential: 1.0 keeps the rate constant.
  config.optimizer.decay_rate = 0.666
  # For exponential. True: the rate changes at epoch boundaries (the
  # codelab); False: per step.
  config.optimizer.staircase = True
  # For cosine (fractions allowed).
  config.optimizer.warmup_epochs = 0.0
  # For adam: the decay rates of its gradient's mean and of its square
  # (Keras' defaults; the GPU record recipe's are 0.7 and 0.9).
  config.optimizer.beta_1 = 0.9
  config.optimizer.beta_2 = 0.999

  # What the chief leaves in the workdir besides metrics.jsonl and checkpoints.
  config.outputs = ml_collections.ConfigDict()
  config.outputs.tensorboard = True  # WORKDIR/tensorboard/{train,eval}
  config.outputs.saved_model = True  # WORKDIR/export, at the end
  config.outputs.plots = True  # WORKDIR/plots/*.png, at the end
  # WORKDIR/export/model.tflite and model_int8.tflite, from the SavedModel at
  # the end, each checked on the test set (as mnist-dist-export does).
  config.outputs.litert = False
  config.outputs.litert_int8 = False
  # 'A,B': a profiler trace of steps A to B (from 1; rounded out to whole
  # loop calls) into WORKDIR/tensorboard, for TensorBoard's Profile tab
  # (mnist_dist/outputs/profiling.py). '': off.
  config.outputs.profile_steps = ''

  config.distribution = ml_collections.ConfigDict()
  config.distribution.strategy = 'auto'
  # N > 0: Mirrored over N logical CPU devices, to try multi-replica on a CPU.
  config.distribution.cpu_devices = 0
  # For strategy=tpu: 'local' (a TPU VM), a TPU name, or grpc://host:port.
  config.distribution.tpu = 'local'
  # multi_worker_mirrored: seconds of missed heartbeats after which the
  # cluster declares a worker gone (every survivor then exits 76). 0: auto,
  # 10 s (TensorFlow's) on a GPU host, 30 s on a CPU-only one, whose training
  # threads can starve the heartbeats of a loaded machine (docs/scaling_out.md).
  config.distribution.heartbeat_timeout_s = 0.0
  # multi_worker_mirrored: seconds a worker waits for all the others to join
  # the cluster before it gives up ("the cluster could not form", exit 76);
  # TensorFlow's own wait is an hour.
  config.distribution.join_timeout_s = 600.0

  # A start that resumes a run: True accepts values that change how it
  # trains (train.epochs, the optimizer's, augmentation: the TRAINING_KEYS
  # of mnist_dist/base/workdir.py), which are otherwise refused; each change
  # is kept in WORKDIR/config_history.jsonl.
  config.resume = ml_collections.ConfigDict()
  config.resume.accept_changes = False
  return config


def _value(config, key):
  section, name = key.split('.')
  return config[section][name]


def _check_choice(value, choices, key):
  if value not in choices:
    raise ConfigError(
        f'{key}={value!r} is not one of: {", ".join(choices)}')


def _check_own_model(name: str) -> None:
  """Refuses a model of the user's not named `package.module:function`.

  Only the form: the module is imported when the model is built
  (`models.create_model`), which needs TensorFlow.
  """
  module_name, _, function_name = name.partition(':')
  if not (function_name.isidentifier() and all(
      part.isidentifier() for part in module_name.split('.'))):
    raise ConfigError(f'model.name={name!r} is neither one of: '
                      f'{", ".join(MODELS)}, nor package.module:function')


def _check_positive(value, key):
  if not isinstance(value, (int, float)) or value <= 0:
    raise ConfigError(f'{key}={value!r} must be a positive number')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot run.

  Checks that need the strategy (the batch against the replica count, the
  loop against the epoch) are in `check_against_run`.
  """
  for key, choices in CHOICES.items():
    if key == 'model.name' and ':' in config.model.name:
      _check_own_model(config.model.name)
      continue
    _check_choice(_value(config, key), choices, key)
  for key in ('train.epochs', 'train.global_batch_size',
              'train.eval_batch_size', 'optimizer.learning_rate',
              'optimizer.decay_rate', 'data.synthetic_train_examples',
              'data.synthetic_eval_examples', 'checkpoint.every_steps',
              'checkpoint.keep'):
    _check_positive(_value(config, key), key)
  _check_model_and_augmentation(config)
  _check_training_and_outputs(config)


def _check_model_and_augmentation(config) -> None:
  if not 0 <= config.model.dropout < 1:
    raise ConfigError(f'model.dropout={config.model.dropout} must be in [0, 1)')
  if not isinstance(config.model.width, int) or config.model.width < 1:
    raise ConfigError(f'model.width={config.model.width!r} must be an integer '
                      '>= 1')
  if config.model.width != 1 and not config.model.name.startswith('conv'):
    raise ConfigError(f'model.width is for the conv models, not '
                      f'{config.model.name!r}')
  for name in ('max_shift', 'max_rotation', 'max_scale', 'elastic_alpha'):
    if config.data.augment[name] < 0:
      raise ConfigError(f'data.augment.{name}={config.data.augment[name]} '
                        'must be >= 0 (0: off)')
  if config.data.augment.elastic_sigma <= 0:
    raise ConfigError('data.augment.elastic_sigma must be > 0')
  if config.data.augment.max_scale >= 1:
    raise ConfigError(f'data.augment.max_scale={config.data.augment.max_scale}'
                      ' must be < 1')


def _check_training_and_outputs(config) -> None:
  if not 0 <= config.train.label_smoothing < 1:
    raise ConfigError(f'train.label_smoothing={config.train.label_smoothing} '
                      'must be in [0, 1)')
  if not 0 <= config.train.ema_decay < 1:
    raise ConfigError(f'train.ema_decay={config.train.ema_decay} must be in '
                      '[0, 1) (0: off)')
  if config.optimizer.warmup_epochs < 0:
    raise ConfigError('optimizer.warmup_epochs must be >= 0')
  if config.optimizer.schedule == 'cosine':
    if config.optimizer.warmup_epochs >= config.train.epochs:
      raise ConfigError(
          f'optimizer.warmup_epochs={config.optimizer.warmup_epochs} leaves no '
          f'epochs of the {config.train.epochs} to decay over')
  elif config.optimizer.warmup_epochs:
    raise ConfigError('optimizer.warmup_epochs is for optimizer.schedule='
                      'cosine')
  for name in ('beta_1', 'beta_2'):
    if not 0 <= config.optimizer[name] < 1:
      raise ConfigError(f'optimizer.{name}={config.optimizer[name]} must be '
                        'in [0, 1)')
  if config.optimizer.name != 'adam' and (
      config.optimizer.beta_1, config.optimizer.beta_2) != (0.9, 0.999):
    raise ConfigError('optimizer.beta_1 and beta_2 are for optimizer.name=adam')
  if (not isinstance(config.train.accumulation_steps, int) or
      config.train.accumulation_steps < 1):
    raise ConfigError(f'train.accumulation_steps='
                      f'{config.train.accumulation_steps!r} must be an '
                      'integer >= 1 (1: off)')
  if config.train.steps_per_loop < 0:
    raise ConfigError('train.steps_per_loop must be >= 0 (0: auto)')
  if config.data.validation_split < 0:
    raise ConfigError('data.validation_split must be >= 0 (0: none)')
  if not 0 <= config.train.stop_at_accuracy <= 1:
    raise ConfigError(
        f'train.stop_at_accuracy={config.train.stop_at_accuracy} must be in '
        '[0, 1] (0: never stop early)')
  if config.data.train_examples < 0:
    raise ConfigError('data.train_examples must be >= 0 (0: all)')
  if (config.outputs.litert or config.outputs.litert_int8) and not (
      config.outputs.saved_model):
    raise ConfigError('outputs.litert and outputs.litert_int8 convert the '
                      'SavedModel: they need outputs.saved_model=True')
  profile_steps(config.outputs)
  if config.distribution.cpu_devices < 0:
    raise ConfigError('distribution.cpu_devices must be >= 0')
  if config.distribution.heartbeat_timeout_s < 0:
    raise ConfigError('distribution.heartbeat_timeout_s must be >= 0 (0: auto)')
  if config.distribution.join_timeout_s <= 0:
    raise ConfigError('distribution.join_timeout_s must be > 0')
  if config.distribution.cpu_devices and config.distribution.strategy not in (
      'auto', 'mirrored'):
    raise ConfigError(
        'distribution.cpu_devices is for strategy auto or mirrored, not '
        f'{config.distribution.strategy!r}')


def profile_steps(outputs_config) -> tuple[int, int] | None:
  """outputs.profile_steps 'A,B' (or 'A') as (A, B); '' as None.

  Raises ConfigError for anything else. The one parser of the key: the
  controller hands the pair to the profiler's action.
  """
  text = str(outputs_config.profile_steps)
  if not text.strip():
    return None
  parts = [part.strip() for part in text.split(',')]
  if len(parts) > 2 or not all(part.isdigit() for part in parts):
    raise ConfigError(f'outputs.profile_steps={text!r} must be A,B: the first '
                      'and last step to profile (or empty: off)')
  first, last = int(parts[0]), int(parts[-1])
  if not 1 <= first <= last:
    raise ConfigError(f'outputs.profile_steps={text!r} must have 1 <= A <= B')
  return first, last


def check_against_run(config, *, num_replicas: int,
                      steps_per_epoch: int) -> None:
  """Checks the config against the strategy and the data it will run on."""
  batch = config.train.global_batch_size
  if batch % num_replicas:
    raise ConfigError(
        f'train.global_batch_size={batch} is not divisible by the '
        f'{num_replicas} replicas')
  micro_batches = config.train.accumulation_steps
  if batch % (num_replicas * micro_batches):
    raise ConfigError(
        f'train.global_batch_size={batch} is not divisible into '
        f'train.accumulation_steps={micro_batches} micro-batches on each of '
        f'the {num_replicas} replicas')
  if steps_per_epoch < 1:
    raise ConfigError(
        f'train.global_batch_size={batch} is larger than the training set')
  if config.train.steps_per_loop > steps_per_epoch:
    raise ConfigError(
        f'train.steps_per_loop={config.train.steps_per_loop} is larger than an '
        f'epoch ({steps_per_epoch} steps)')
