"""The entry point as a user runs it: a real training run, and bad input."""

import json
import os

import numpy as np
import pytest

from helpers import run_main
from helpers import write_idx
from mnist_dist import idx


@pytest.mark.slow
def test_conv_bn_one_epoch_on_real_mnist(tmp_path, mnist_dir):
  # One epoch with the learning rate decayed over it (0.01 -> 0.0005): with
  # the 10-epoch schedule's constant 0.01, epoch 1 ends anywhere in 96-98.4%.
  process = run_main(
      '--config=configs/conv_bn.py', f'--workdir={tmp_path}',
      f'--config.data.dir={mnist_dir}', '--config.train.epochs=1',
      '--config.optimizer.staircase=False', '--config.optimizer.decay_rate=0.05')
  assert process.returncode == 0, process.stderr[-3000:]
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    (record,) = [json.loads(line) for line in f]
  assert record['eval_examples'] == 10_000
  assert record['eval_accuracy'] >= 0.985
  assert record['step'] == 937 and record['epoch'] == 1
  expected_keys = {'step', 'epoch', 'train_loss', 'train_accuracy', 'eval_loss',
                   'eval_accuracy', 'eval_examples', 'learning_rate',
                   'elapsed_s', 'examples_per_s'}
  assert expected_keys <= set(record)
  for output in ('export/saved_model.pb', 'plots/training_curves.png',
                 'plots/predictions.png', 'tensorboard/eval', 'config.json'):
    assert os.path.exists(tmp_path / output), output
  loop_lines = [l for l in process.stderr.splitlines() if 'examples/s' in l]
  assert len(loop_lines) == 10  # 937 steps in loops of 100.
  assert 'step 937/937 epoch 1/1' in loop_lines[-1] and 'ETA' in loop_lines[-1]


@pytest.mark.parametrize('args,message', [
    (['--config.data.dir=/nonexistent/mnist'],
     '/nonexistent/mnist: no such folder'),
    (['--config.model.name=resnet'], "model.name='resnet' is not one of"),
    (['--config.data.source=synthetic', '--config.train.steps_per_loop=5000'],
     'train.steps_per_loop=5000 is larger than an epoch'),
    (['--config.data.source=synthetic', '--config.distribution.cpu_devices=2',
      '--config.train.global_batch_size=65'],
     'train.global_batch_size=65 is not divisible by the 2 replicas'),
    (['--config.train.epoch=3'],
     'unknown config key \'epoch\' Did you mean "epochs"'),
    (['--config=configs/nope.py'], "No such file or directory: 'configs/nope.py'"),
    (['--config.data.dir=nosuch://bucket/mnist'], 'nosuch://bucket/mnist'),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
  process = run_main(f'--workdir={tmp_path}', *args, timeout=120)
  assert process.returncode == 2, process.stderr[-2000:]
  last_line = process.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and message in last_line
  assert 'Traceback' not in process.stderr


@pytest.mark.parametrize('file,array,magic,message', [
    (idx.FILES['test'][1], np.zeros((4, 28, 28)), idx.IMAGES_MAGIC,
     'wrong magic number 2051'),
    (idx.FILES['test'][1], np.zeros(3), idx.LABELS_MAGIC,
     'holds 4 images but'),
    (idx.FILES['test'][1], np.array([0, 1, 10, 2]), idx.LABELS_MAGIC,
     'label 10 at index 2 is outside 0..9'),
    (idx.FILES['train'][0], np.zeros((6, 28, 27)), idx.IMAGES_MAGIC,
     'images are 28x27, expected 28x28'),
])
def test_bad_data_is_named_before_training(tmp_path, good_dir, file, array,
                                           magic, message):
  for stale in (file, file + '.gz'):
    if os.path.exists(good_dir / stale):
      os.remove(good_dir / stale)
  write_idx(good_dir / file, array, magic)
  process = run_main(f'--workdir={tmp_path / "run"}',
                     f'--config.data.dir={good_dir}', timeout=120)
  assert process.returncode == 2, process.stderr[-2000:]
  last_line = process.stderr.strip().splitlines()[-1]
  assert last_line.startswith(f'error: {good_dir}/') and message in last_line
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
