"""outputs.profile_steps: a profiler trace of the chosen steps, which
TensorBoard's profile plugin opens."""

import glob
import os

from absl import logging
import pytest

from helpers import small_config
from mnist_dist import config as config_lib
from mnist_dist import train
from mnist_dist.base import errors


@pytest.mark.parametrize('text, steps', [
    ('', None), ('  ', None), ('5', (5, 5)), ('9,12', (9, 12)),
    (' 1 , 3 ', (1, 3))])
def test_parses_the_first_and_last_step(text, steps):
  assert config_lib.profile_steps(
      small_config({'outputs.profile_steps': text}).outputs) == steps


@pytest.mark.parametrize('text', ['12,9', '0,5', 'a,b', '1,2,3', '-1,4'])
def test_other_steps_are_refused_by_the_config(text):
  config = small_config({'outputs.profile_steps': text})
  with pytest.raises(errors.ConfigError, match='outputs.profile_steps'):
    config_lib.validate(config)


def test_the_trace_holds_the_train_loop_of_the_chosen_steps(tmp_path,
                                                          monkeypatch):
  started = []
  monkeypatch.setattr(logging, 'info', lambda message, *args: started.append(
      message % args) if message.startswith('Profiling') else None)
  # 16 steps an epoch in loops of 8: steps 9 to 12 are the second call.
  train.train_and_evaluate(small_config({
      'model.name': 'dense', 'train.epochs': 2,
      'outputs.profile_steps': '9,12'}), str(tmp_path))
  assert started == [
      f'Profiling from step 9 to {tmp_path}/tensorboard.']
  (trace,) = glob.glob(os.path.join(
      tmp_path, 'tensorboard', 'plugins', 'profile', '*', '*.xplane.pb'))
  with open(trace, 'rb') as f:
    content = f.read()
  # The compiled loop's function and the ops of its step, by name.
  assert content.count(b'train_loop') > 0
  assert content.count(b'MatMul') > 0
  # Stopped after step 16, before the evaluation.
  assert content.count(b'eval_loop') == 0
