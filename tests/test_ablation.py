"""experiments.ablate end to end on the smoke preset, and how it switches levers."""

import pytest
import os

from tests.conftest import assert_one_line_error, run_module, smoke_config
from unmix_jax import ablation


def test_each_lever_is_switched_the_other_way_from_the_recipe():
  recipe = smoke_config(**{"model.block": "residual", "model.norm": "batch"})
  for lever in ablation.LEVERS:
    assert ablation.applies(recipe, lever), lever
    other = ablation.switched(recipe, lever)
    assert ablation.uses(other, lever) != ablation.uses(recipe, lever), lever
    changed = {k for k in ablation.LEVERS[lever][1] if ablation._get(other, k) !=
               ablation._get(recipe, k)}
    assert changed, lever  # only the lever's own fields move
  assert not ablation.applies(smoke_config(), "attention")  # the reference U-Net has none
  assert not ablation.applies(smoke_config("vae"), "bounded")  # not mixture-consistent


@pytest.mark.slow
def test_the_command_trains_scores_and_reports(tmp_path, tfds_data_dir):
  results = str(tmp_path / "ablation")
  out = run_module("experiments.ablate", "--config=configs/unet.py:smoke",
                   "--levers=flip_average", f"--results_dir={results}")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(results, "report.md")) as f:
    report = f.read()
  assert "| flip_average | no |" in report
  assert "test gain **" in report and "paired" in report
  # The eval-only lever reuses the recipe's run: one model trained.
  assert sorted(d for d in os.listdir(results) if not d.endswith((".md", ".json"))) == [
      "recipe"]
  # Again: the recipe is scored, not retrained.
  rows = ablation.run_all(smoke_config(), results, ("flip_average",), show_progress=False)
  assert [r["lever"] for r in rows] == ["flip_average"]
  assert sorted(os.listdir(results)) == ["recipe", "report.md", "study.json"]
  for row in rows:
    lo, hi = row["difference"]["ci95"]
    assert lo <= row["difference"]["mean"] <= hi
    assert ablation.verdict(row) in ("helps", "hurts", "no clear effect")


def test_an_unknown_lever_is_one_line(tmp_path):
  assert_one_line_error(run_module("experiments.ablate", "--config=configs/unet.py:smoke",
                                   "--levers=wings", f"--results_dir={tmp_path}"), "no lever wings")
