"""The .tflite models answer as the SavedModel does, run by LiteRT."""

import argparse
import os
import re
import shutil

from ai_edge_litert.interpreter import Interpreter
import numpy as np
import pytest

from helpers import load_config
from helpers import small_config
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.data import input_pipeline
from mnist_dist.modeling import models
from mnist_dist.outputs import export
from mnist_dist.outputs import litert


@pytest.mark.slow  # Trains on real digits.
def test_float_and_int8_models_against_the_saved_model(mnist_dir, tmp_path):
  # dense, one epoch on 6,000 real training images (~92%).
  config = load_config('dense')
  config.data.dir = mnist_dir
  config.data.train_examples = 6000
  config.train.epochs = 1
  config.outputs.tensorboard = False
  config.outputs.plots = False
  config.outputs.litert = config.outputs.litert_int8 = True
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  export_dir = os.path.join(workdir, 'export')
  # The run wrote both at its end (outputs.litert, outputs.litert_int8); the
  # command, below, writes them again and says how they do.
  assert sorted(name for name in os.listdir(export_dir)
                if name.endswith('.tflite')) == ['model.tflite',
                                                 'model_int8.tflite']

  floats = litert.write_tflite(workdir)
  assert floats.path == os.path.join(export_dir, 'model.tflite')
  assert os.path.getsize(floats.path) == floats.size_bytes
  assert floats.examples == 10000 and floats.agreement >= 0.999
  assert floats.accuracy == pytest.approx(floats.saved_model_accuracy,
                                          abs=0.001)
  assert floats.accuracy > 0.85  # The training did train.
  images = input_pipeline.load(config.data, seed=config.seed)[1].images[:500]
  probabilities, classes = litert.load_predict_fn(floats.path,
                                                  batch_size=128)(images)
  expected_probabilities, expected_classes = export.load_predict_fn(
      export_dir)(images)
  assert probabilities.dtype == np.float32 and classes.dtype == np.int64
  np.testing.assert_allclose(probabilities, expected_probabilities,
                             atol=1e-5)
  np.testing.assert_array_equal(classes, expected_classes)

  int8 = litert.write_tflite(workdir, quantize='int8')
  assert int8.path == os.path.join(export_dir, 'model_int8.tflite')
  assert int8.accuracy >= floats.accuracy - 0.01
  assert int8.agreement > 0.97
  assert int8.size_bytes < 0.3 * floats.size_bytes
  tensors = Interpreter(model_path=int8.path).get_tensor_details()
  # The three weight matrices (2-D, without a batch dimension) are int8...
  weights = [t for t in tensors
             if len(t['shape']) == 2 and -1 not in t['shape_signature']]
  assert len(weights) == 3
  assert all(t['dtype'] == np.int8 for t in weights), weights
  # ...and so are the activations (a batch dimension) between the layers,
  # whose ranges the calibration measured.
  assert sum(t['dtype'] == np.int8 and -1 in t['shape_signature']
             for t in tensors) >= 3


def _untrained_run(workdir):
  """A workdir as a run on synthetic data leaves it, untrained."""
  config = small_config()
  workdir_lib.check_and_record_config(config, workdir, write=True)
  export.export_saved_model(models.create_model(config.model),
                            workdir_lib.path(workdir, workdir_lib.EXPORT))


def test_a_float_model_that_answers_otherwise_is_not_written(tmp_path,
                                                             monkeypatch):
  workdir, other = str(tmp_path / 'run'), str(tmp_path / 'other')
  _untrained_run(workdir)
  _untrained_run(other)  # Its own random weights.
  # Another model stands for a converter that broke the model.
  convert = litert.convert
  monkeypatch.setattr(litert, 'convert', lambda _, **kwargs: convert(
      workdir_lib.path(other, workdir_lib.EXPORT), **kwargs))
  with pytest.raises(ValueError, match=r'model\.tflite: not written: the '
                     r"converted model gives the SavedModel's digit on only "
                     r'\d+\.\d+% of the 1000 test images'):
    litert.write_tflite(workdir)
  assert not os.path.exists(os.path.join(workdir, 'export', 'model.tflite'))


def test_the_command_writes_and_reports(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  _untrained_run(workdir)
  # pylint: disable-next=protected-access
  litert.main(litert._parse_flags(['mnist-dist-export', workdir,
                                   '--format=litert']))
  path = os.path.join(workdir, 'export', 'model.tflite')
  assert re.fullmatch(
      rf'{re.escape(path)}: {os.path.getsize(path):,} bytes; on the 1000 test '
      r'images: accuracy \d+\.\d\d% \(the SavedModel \d+\.\d\d%\), the same '
      r'digit as the SavedModel on 100\.00%\n', capsys.readouterr().out)


def _refusal(workdir: str, capsys) -> str:
  """What `mnist-dist-export WORKDIR` printed as it failed, exit 1."""
  with pytest.raises(SystemExit) as exit_info:
    litert.main(argparse.Namespace(workdir=workdir, format='litert',
                                   quantize='none'))
  assert exit_info.value.code == errors.EXIT_FAILED
  return capsys.readouterr().err


def test_a_workdir_without_export_is_one_error_line(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  workdir_lib.check_and_record_config(small_config(), workdir, write=True)
  assert _refusal(workdir, capsys) == (
      f'error: {workdir}/export: no SavedModel; training writes it at its '
      'end, unless outputs.saved_model=False\n')


def test_an_export_cut_short_is_one_error_line(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  _untrained_run(workdir)
  export_dir = workdir_lib.path(workdir, workdir_lib.EXPORT)
  shutil.rmtree(os.path.join(export_dir, 'variables'))  # A copy cut short.
  assert _refusal(workdir, capsys) == (
      f'error: export/ is incomplete (no {export.MARKER} in {export_dir}): '
      'run the trainer again to redo it\n')
