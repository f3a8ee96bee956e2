"""The metric Vertex AI's hyperparameter tuning reads, as its library writes
it."""

import json

import pytest

from helpers import small_config
from mnist_dist import train


def test_reports_to_the_tuning_service_inside_a_trial(tmp_path, monkeypatch):
  metrics_file = tmp_path / 'hypertune' / 'output.metrics'
  monkeypatch.setenv('CLOUD_ML_TRIAL_ID', '7')
  monkeypatch.setenv('CLOUD_ML_HP_METRIC_FILE', str(metrics_file))
  result = train.train_and_evaluate(
      small_config({'model.name': 'dense', 'train.epochs': 2}),
      str(tmp_path / 'run'))
  with open(metrics_file) as f:
    reports = [json.loads(line) for line in f]
  assert [r['global_step'] for r in reports] == ['16', '32']
  assert reports[-1]['trial'] == '7'
  assert float(reports[-1]['eval_accuracy']) == pytest.approx(
      result.metrics[-1]['eval_accuracy'])
  assert isinstance(reports[-1]['timestamp'], float)
