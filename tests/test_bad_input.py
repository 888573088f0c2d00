"""Bad settings end with one line that names the field, exit code 2 and no traceback."""

import os
import shutil

import pytest

from tests.test_end_to_end import run_train

CASES = [
    (["--config.model.name=resnet"], "config.model.name"),
    (["--config.loss=l1"], "config.loss"),
    (["--config.train.lr=-1.0"], "config.train.lr"),
    (["--config.train.lr=0.0"], "config.train.lr"),
    (["--config.train.batch_size=0"], "config.train.batch_size"),
    (["--config.train.epochs=0"], "config.train.epochs"),
    (["--config.data.num_images=60000"], "config.data.num_images"),
    (["--config.data.num_test_images=20000"], "config.data.num_test_images"),
    (["--config.data.num_train_pairs=490"], "num_train_pairs"),
    (["--config.data.num_test_pairs=500"], "config.data.num_test_pairs"),
    (["--config.train.conv_impl=fast"], "config.train.conv_impl"),
    (["--config.train.steps_per_call=0"], "config.train.steps_per_call"),
]


def assert_one_line_error(result, needle):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and needle in last, last
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("overrides,needle", CASES)
def test_bad_config_value(tmp_path, tfds_data_dir, overrides, needle):
  result = run_train(str(tmp_path / "run"), *overrides, data_dir=tfds_data_dir)
  assert_one_line_error(result, needle)


def test_data_dir_without_cifar10_and_download_off(tmp_path, tfds_data_dir):
  empty = tmp_path / "empty"
  empty.mkdir()
  result = run_train(str(tmp_path / "run"), f"--config.data.data_dir={empty}",
                     "--config.data.download=False", data_dir=tfds_data_dir)
  assert_one_line_error(result, "config.data.download")


def test_workdir_of_another_model_keeps_its_checkpoint(tmp_path, tfds_data_dir):
  workdir = str(tmp_path / "run")
  assert run_train(workdir, data_dir=tfds_data_dir).returncode == 0
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  result = run_train(workdir, "--config.model.features=(4,8,16)", data_dir=tfds_data_dir)
  assert_one_line_error(result, "different model")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_unwritable_workdir(tmp_path, tfds_data_dir):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_train(str(blocker / "run"), data_dir=tfds_data_dir)
  assert_one_line_error(result, "--workdir")


def test_batch_size_must_divide_over_the_devices(tmp_path, tfds_data_dir):
  result = run_train(str(tmp_path / "run"), "--config.train.batch_size=15", data_dir=tfds_data_dir,
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert_one_line_error(result, "config.train.batch_size=15")


def test_checkpoint_of_another_model_without_config_json(tmp_path, tfds_data_dir):
  workdir = str(tmp_path / "run")
  assert run_train(workdir, data_dir=tfds_data_dir).returncode == 0
  os.remove(os.path.join(workdir, "config.json"))
  result = run_train(workdir, "--config.model.features=(4,8,16)", data_dir=tfds_data_dir)
  assert_one_line_error(result, "belongs to another model")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_onednn_without_a_compiler_is_one_line_naming_the_fix(tmp_path, tfds_data_dir):
  result = run_train(str(tmp_path / "run"), "--config.train.conv_impl=onednn",
                     data_dir=tfds_data_dir,
                     env={"CXX": str(tmp_path / "no-such-g++"),
                          "XDG_CACHE_HOME": str(tmp_path / "cache")})
  assert_one_line_error(result, "config.train.conv_impl='onednn'")
  assert "onednn-cpu-gomp" in result.stderr.strip().splitlines()[-1]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_auto_without_onednn_trains_with_the_cpu_forms_and_says_why(tmp_path, tfds_data_dir):
  result = run_train(str(tmp_path / "run"), data_dir=tfds_data_dir,
                     env={"CXX": str(tmp_path / "no-such-g++"),
                          "XDG_CACHE_HOME": str(tmp_path / "cache")})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "convs as cpu (auto)" in result.stdout
  assert "conv_impl='auto' uses 'cpu' here" in result.stdout and "onednn-cpu-gomp" in result.stdout
