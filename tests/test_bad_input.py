"""Bad settings and inputs: one message that names the field and the fix, checked in-process;
one subprocess per kind of failure shows the command's one line and exit code."""

import os
import re
import subprocess
import sys

import jax
import pytest

from tests.conftest import (ROOT, assert_one_line_error, checkpoint_steps, run_module,
                            run_unmix, smoke_config, train_smoke)
from unmix_jax import backend, checkpoint, cli, config_checks, data, parallel

CASES = [
    ({"model.name": "resnet"}, "config.model.name"),
    ({"loss": "l1"}, "config.loss"),
    ({"train.lr": -1.0}, "config.train.lr"),
    ({"train.lr": 0.0}, "config.train.lr"),
    ({"train.batch_size": 0}, "config.train.batch_size"),
    ({"train.epochs": 0}, "config.train.epochs"),
    ({"data.num_images": 60000}, "config.data.num_images"),
    ({"data.num_test_images": 20000}, "config.data.num_test_images"),
    ({"data.num_train_pairs": 490}, "num_train_pairs"),
    ({"data.num_test_pairs": 500}, "config.data.num_test_pairs"),
    ({"train.conv_impl": "fast"}, "config.train.conv_impl"),
    ({"train.steps_per_call": 0}, "config.train.steps_per_call"),
    ({"train.steps_per_call": 3}, "must divide the steps of an epoch (4)"),
    ({"train.compute_dtype": "float16"}, "config.train.compute_dtype"),
    ({"model.features": (4, 8, 16, 32, 64, 128, 256)}, "config.model.features"),
]


@pytest.mark.parametrize("fields,needle", CASES)
def test_a_bad_config_value_names_its_field(fields, needle):
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(smoke_config(**fields))
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_command_reports_a_bad_value_in_one_line(tmp_path):
  result = run_module("experiments.train", "--config=configs/unet.py:smoke",
                      f"--workdir={tmp_path / 'run'}", "--config.train.lr=-1.0")
  assert_one_line_error(result, "config.train.lr=-1.0")
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_the_batch_must_divide_over_the_devices(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  with pytest.raises(config_checks.ConfigError, match="config.train.batch_size=15"):
    config_checks.validate(smoke_config(**{"train.batch_size": 15}))


def test_a_data_dir_without_cifar10_and_download_off(tmp_path):
  config = smoke_config(**{"data.data_dir": str(tmp_path), "data.download": False})
  with pytest.raises(data.DataError, match="config.data.download"):
    data.load(config)


def test_a_workdir_of_another_model_keeps_its_checkpoints(unet_run):
  before = checkpoint_steps(unet_run)
  other = smoke_config(**{"model.features": (4, 8, 16)})
  with pytest.raises(config_checks.ConfigError, match="different model"):
    config_checks.check_workdir(unet_run, other)
  assert checkpoint_steps(unet_run) == before


def test_a_checkpoint_of_another_model_without_config_json(unet_run, copy_run):
  run_dir = copy_run(unet_run)
  os.remove(os.path.join(run_dir, "config.json"))
  with pytest.raises(checkpoint.CheckpointError, match="belongs to another model"):
    train_smoke(run_dir, **{"model.features": (4, 8, 16)})
  assert checkpoint_steps(run_dir) == [4, 8, 12]


def test_an_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(config_checks.ConfigError, match="--workdir"):
    config_checks.check_workdir(str(blocker / "run"), smoke_config())


def test_onednn_without_a_compiler_is_one_line_naming_the_fix(tmp_path, monkeypatch):
  from unmix_jax.cpu import onednn

  monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  with pytest.raises(ValueError) as e:
    onednn.load.__wrapped__()  # the build itself, not the process's cached result
  message = str(e.value)
  assert "config.train.conv_impl='onednn'" in message and "onednn-cpu-gomp" in message
  assert "\n" not in message


def test_auto_without_onednn_uses_the_cpu_forms_and_says_why(monkeypatch):
  monkeypatch.setattr(backend, "onednn_unavailable", lambda: "no compiler 'g++'")
  assert backend.resolve("auto") == "cpu"
  assert "no compiler 'g++'" in backend.describe("auto")
  assert backend.resolve("xla") == "xla"


# Command-line mistakes: checked in-process, then once per entry point as a user meets them.

CONFIG_MISTAKES = [
    (["--config=unet:tpu"], "--config: Unknown preset 'tpu'; choose one of"),
    (["--config=configs/unet.py:tpu"], "--config: Unknown preset 'tpu'; choose one of"),
    (["--config=configs/nope.py"], "no config 'configs/nope.py'; use unet, ae, vae"),
    (["--config.train.lrr=0.1"], "no field 'lrr'; did you mean --config.train.lr?"),
    (["--config.trian.lr=0.1"], "no field 'trian'; did you mean --config.train.lr?"),
    (["--config.train.lr=abc"], "--config.train.lr=abc: could not convert string to float"),
    (["--config.train.epochs=2.5"], "--config.train.epochs=2.5: invalid literal for int()"),
    (["--config.data.augment=maybe"], "--config.data.augment=maybe: ('Non-boolean argument"),
    (["--config.train.lr"], "Missing value for flag --config.train.lr"),
]


@pytest.mark.parametrize("args,needle", CONFIG_MISTAKES)
def test_a_config_mistake_is_named_before_anything_runs(args, needle):
  with pytest.raises(cli.UsageError) as e:
    cli.parse_config(["train", *args], "unet:cpu")
  assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_configs_by_installed_name_by_file_and_with_overrides(tmp_path):
  by_name = cli.parse_config(["train", "--config=vae:smoke", "--config.train.lr=3e-4",
                              "--config.model.encoder_widths=(8,16)"], "unet:cpu")
  assert (by_name.model.name, by_name.preset, by_name.train.lr) == ("vae", "smoke", 3e-4)
  assert tuple(by_name.model.encoder_widths) == (8, 16)
  by_file = cli.parse_config(["train", f"--config={ROOT}/configs/ae.py:cpu",
                              "--config.data.augment", "--config.train.epochs", "3"], "unet:cpu")
  assert (by_file.model.name, by_file.data.augment, by_file.train.epochs) == ("ae", True, 3)
  default = cli.parse_config(["train"], "unet:cpu")
  assert (default.model.name, default.preset) == ("unet", "cpu")


# Each command as a user meets it, through the console command (no JAX is imported before the
# mistake is found, so each takes a second or two).
COMMAND_MISTAKES = [
    (["train", "configs/vae.py:smoke"], "unexpected 'configs/vae.py:smoke' on the command line "
                                        "(did you mean --config=configs/vae.py:smoke?)"),
    (["train", "--config.train.lrr=0.1"], "did you mean --config.train.lr?"),
    (["train", "--workdr=x"], "Unknown command line flag 'workdr'"),
    (["benchmark", "--config=ae:tpu"], "Unknown preset 'tpu'"),
    (["benchmark", "--steps=many"], "--steps"),
    (["ablate", "--epochs=0"], "--epochs"),
    (["evaluate"], "--workdir"),
    (["evaluate", "--workdir=x", "--checkpoint=first"], "--checkpoint"),
    (["compare", "--preset=tpu"], "--preset"),
    (["sample", "--workdir=x", "--num=lots"], "--num"),
    (["separate", "--workdir=x", "--num=0"], "--num"),
    (["export", "--workdir=x", "extra"], "unexpected 'extra' on the command line"),
    (["launch", "--processes=0", "train"], "--processes=0 must be >= 1"),
    (["untrain"], "unmix has no command 'untrain'"),
]


@pytest.mark.parametrize("args", COMMAND_MISTAKES, ids=lambda a: " ".join(a[0]))
def test_every_command_reports_a_command_line_mistake_in_one_line(args, tmp_path):
  words, needle = args
  assert_one_line_error(run_unmix(*words, cwd=str(tmp_path)), needle)


def test_help_lists_the_flags_the_presets_and_every_field(tmp_path):
  short = run_unmix("train", "--help", cwd=str(tmp_path))
  assert short.returncode == 0, short.stderr
  for needle in ("--config", "--workdir", "cpu10 ", "--config=unet:cpu --help"):
    assert needle in short.stdout, short.stdout
  fields = run_unmix("train", "--config=vae:smoke", "--config.train.lr=0.5", "--help",
                     cwd=str(tmp_path))
  assert fields.returncode == 0, fields.stderr
  assert "train.lr = 0.5  # peak learning rate" in fields.stdout
  assert "model.latent_dim = 4  # size of z" in fields.stdout
  listing = run_unmix(cwd=str(tmp_path))
  assert listing.returncode == 2 and "separate" in listing.stdout


LAUNCHES = [
    ({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID are not"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID=2 must be a whole number from 0 to 1"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     "is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "two",
      "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES=two"),
    ({"JOB_COMPLETION_INDEX": "1"}, "a Kubernetes indexed Job) but no JAX_COORDINATOR_ADDRESS"),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"},
     "but not by srun"),  # python started by sbatch itself
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "PMIX_RANK": "1"},
     "Open MPI 5 (PMIx)"),
]


@pytest.mark.parametrize("env,needle", LAUNCHES)
def test_half_a_launch_names_the_variable_and_the_fix(env, needle):
  with pytest.raises(parallel.LaunchError, match=re.escape(needle)) as e:
    parallel.launch_settings(env)
  assert "\n" not in str(e.value)


def test_each_scheduler_starts_the_processes_of_one_run():
  assert parallel.launch_settings({}) is None
  assert parallel.launch_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert parallel.launch_settings({"JAX_NUM_PROCESSES": "1", "JOB_COMPLETION_INDEX": "0"}) is None
  assert parallel.launch_settings({"UNMIX_JOIN": "jax"}) == {}  # a TPU pod slice: JAX detects
  explicit = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
              "JAX_PROCESS_ID": "1"}
  assert parallel.launch_settings(explicit) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1, local_device_ids=None)
  indexed_job = {"JAX_COORDINATOR_ADDRESS": "run-0.run:1234", "JAX_NUM_PROCESSES": "4",
                 "JOB_COMPLETION_INDEX": "3"}
  assert parallel.launch_settings(indexed_job)["process_id"] == 3
  srun = {"SLURM_JOB_ID": "4097", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16",
          "SLURM_STEP_NODELIST": "gpu[007-010],cpu1", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
          "SLURM_STEP_TASKS_PER_NODE": "4(x4)", "SLURM_NODEID": "1",
          "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert parallel.launch_settings(srun) == dict(
      coordinator_address="gpu007:61441", num_processes=16, process_id=5,
      local_device_ids=[2, 3])  # 4 tasks share the node's 8 GPUs: two each
  mpirun = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
            "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"}
  assert parallel.launch_settings(mpirun)["coordinator_address"] == "10.96.0.1:62624"
  mpi5 = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
          "JAX_COORDINATOR_ADDRESS": "node1:4321"}
  assert parallel.launch_settings(mpi5) == dict(
      coordinator_address="node1:4321", num_processes=2, process_id=1, local_device_ids=None)


DEVICE_LAYOUTS = [
    ({}, None),  # every device the process sees
    ({"JAX_LOCAL_DEVICE_IDS": "4,5"}, [4, 5]),
    # srun --ntasks-per-node=1 on an 8-GPU node: the task has the whole node.
    ({"SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, list(range(8))),
    # srun --ntasks-per-node=8 --gpus-per-task=1: each task sees its own GPU, numbered 0.
    ({"SLURM_LOCALID": "5", "SLURM_STEP_TASKS_PER_NODE": "8",
      "CUDA_VISIBLE_DEVICES": "5"}, [0]),
    # srun --ntasks-per-node=8 without --gpus-per-task: each task sees all 8 and takes one.
    ({"SLURM_LOCALID": "5", "SLURM_STEP_TASKS_PER_NODE": "8",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, [5]),
]


@pytest.mark.parametrize("env,ids", DEVICE_LAYOUTS)
def test_every_gpu_of_a_node_is_used_whatever_the_task_layout(env, ids):
  assert parallel.local_device_ids(env) == ids


NO_COORDINATOR = """
from unmix_jax import cli, parallel
parallel.JOIN_TIMEOUT_S = 2
with cli.one_line_errors():
  parallel.initialize({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2",
                       "JAX_PROCESS_ID": "1"})
"""


@pytest.mark.slow
def test_a_half_set_launch_or_a_silent_coordinator_is_one_line_exit_2(tmp_path):
  result = run_unmix("train", "--config=unet:smoke", f"--workdir={tmp_path / 'run'}",
                     env={"JAX_NUM_PROCESSES": "2"})
  assert_one_line_error(result, "JAX_NUM_PROCESSES=2 is set but")
  result = subprocess.run([sys.executable, "-c", NO_COORDINATOR], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert_one_line_error(result, "did not answer within 2 s")
  result = run_unmix("train", "--config=unet:smoke", f"--workdir={tmp_path / 'run'}",
                     env={"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
                          "SLURM_LOCALID": "0"})  # sbatch --ntasks=2, then python, not srun
  assert_one_line_error(result, "not by srun")
