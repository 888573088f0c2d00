"""The notebook (experiments/colab.ipynb), run headless as Colab runs it: from a fresh
environment where the project is not installed, and reading a run stopped by SIGTERM."""

import json
import os
import signal
import site
import subprocess
import sys
import time

import nbformat
import pytest
import numpy as np
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import ROOT, checkpoint_steps

pytestmark = pytest.mark.slow

NOTEBOOK = os.path.join(ROOT, "experiments", "colab.ipynb")


def fresh_python(tmp_path) -> str:
  """A new virtual environment that sees this one's packages but not the project (its
  editable install is left out), and a Jupyter kernel of it: the notebook must install it."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
  python = str(venv / "bin" / "python")
  visible = tmp_path / "packages"
  visible.mkdir()
  for packages in site.getsitepackages():
    for name in os.listdir(packages):
      if not name.lower().startswith(("unmix_jax", "__editable__", "_unmix_jax")):
        target = visible / name
        if not target.exists():
          target.symlink_to(os.path.join(packages, name))
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(purelib, "packages_of_the_test_environment.pth"), "w") as f:
    f.write(str(visible) + "\n")
  kernel = tmp_path / "jupyter" / "kernels" / "fresh"
  kernel.mkdir(parents=True)
  (kernel / "kernel.json").write_text(json.dumps({
      "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "fresh", "language": "python"}))
  return python


def run_notebook(notebook, tmp_path, kernel: str, **settings):
  """Executes `notebook` with `settings` in the kernel's environment; returns its code cells."""
  saved = {name: os.environ.get(name) for name in settings}
  os.environ.update(settings)
  try:
    NotebookClient(notebook, timeout=600, kernel_name=kernel,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    for name, value in saved.items():
      if value is None:
        del os.environ[name]
      else:
        os.environ[name] = value
  cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
  errors = [o for cell in cells for o in cell.outputs if o.output_type == "error"]
  assert not errors, errors
  return cells


def test_the_notebook_installs_the_project_in_a_fresh_environment_and_runs(
    tmp_path, tfds_data_dir, monkeypatch):
  python = fresh_python(tmp_path)
  absent = subprocess.run([python, "-c", "import unmix_jax"], capture_output=True, cwd=tmp_path)
  assert absent.returncode != 0  # as in a fresh Colab runtime
  pictures = []
  for k in range(2):
    pictures.append(str(tmp_path / f"picture{k}.png"))
    Image.fromarray(np.random.default_rng(k).integers(0, 256, (48, 40, 3), np.uint8)).save(
        pictures[-1])
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  cells = run_notebook(
      nbformat.read(NOTEBOOK, as_version=4), tmp_path, "fresh", UNMIX_SOURCE=ROOT,
      UNMIX_PICTURES=",".join(pictures), UNMIX_COLAB_PRESET="smoke", UNMIX_COLAB_MINUTES="5",
      UNMIX_SEPARATIONS=str(tmp_path / "separations"))
  installed, separated, trained = (str(cells[i].outputs) for i in (0, 1, 2))
  assert "installing unmix_jax from" in installed and str(tmp_path / "venv") in installed
  assert "model: the shipped unet (:cpu60" in separated and "image/png" in separated
  assert os.path.exists(tmp_path / "separations" / "mine_panel.png")
  assert "test (unseen images, 16 pairs)" in trained
  assert os.path.exists(tmp_path / "runs" / "colab-unet-smoke" / "summary.json")
  assert "finished" in str(cells[3].outputs)
  assert any("image/png" in o.get("data", {}) for o in cells[-2].outputs)


def test_the_notebook_reads_a_run_stopped_by_sigterm(tmp_path, tfds_data_dir):
  run_dir = str(tmp_path / "stopped")
  train = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", "--config=unet:smoke", f"--workdir={run_dir}",
       "--config.train.epochs=40"], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(run_dir, "reconstructions.png")):
    assert train.poll() is None and time.time() < deadline, "the run ended before its pictures"
    time.sleep(0.05)
  train.send_signal(signal.SIGTERM)
  _, stderr = train.communicate(timeout=300)
  assert train.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert "Run the same command again to resume" in stderr.strip().splitlines()[-1]
  assert max(checkpoint_steps(run_dir)) < 160 and not os.path.exists(
      os.path.join(run_dir, "summary.json"))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  reading = next(i for i, c in enumerate(notebook.cells) if c.source.startswith("## 3."))
  notebook.cells = notebook.cells[:2] + notebook.cells[reading:]  # installing, then reading
  cells = run_notebook(notebook, tmp_path, "python3", UNMIX_WORKDIR=run_dir,
                       UNMIX_COLAB_MINUTES="0")
  assert "not finished" in str(cells[1].outputs)
  assert any("image/png" in o.get("data", {}) for o in cells[-2].outputs)  # its pictures
