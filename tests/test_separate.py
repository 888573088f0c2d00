"""experiments.separate: any picture through a trained run."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, run_module
from unmix_jax import evaluation, logs, runs, separation, steps


@pytest.fixture
def pictures(tmp_path):
  rng = np.random.default_rng(0)
  paths = {"wide": tmp_path / "wide.png", "gray": tmp_path / "gray.png",
           "rgba": tmp_path / "rgba.png", "text": tmp_path / "text.png"}
  Image.fromarray(rng.integers(0, 256, (50, 70, 3), np.uint8)).save(paths["wide"])
  Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8), "L").save(paths["gray"])
  Image.fromarray(rng.integers(0, 256, (33, 33, 4), np.uint8), "RGBA").save(paths["rgba"])
  paths["text"].write_text("not an image")
  return {k: str(v) for k, v in paths.items()}


def test_any_image_becomes_a_centre_cropped_32x32_rgb_input(pictures, tmp_path):
  wide = separation.load_image(pictures["wide"])
  assert wide.shape == (32, 32, 3) and wide.dtype == np.float32 and 0 <= wide.min() <= 1
  gray = separation.load_image(pictures["gray"])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale replicated
  assert separation.load_image(pictures["rgba"]).shape == (32, 32, 3)
  # A square crop from the middle: a picture whose sides are a different colour loses them.
  block = np.zeros((40, 80, 3), np.uint8)
  block[:, 20:60] = 255
  Image.fromarray(block).save(tmp_path / "sides.png")
  assert separation.load_image(str(tmp_path / "sides.png")).min() == 1.0
  for bad, needle in ((pictures["text"], "not an image"), (str(tmp_path / "none.png"),
                                                            "no such file")):
    with pytest.raises(separation.ImageError, match=needle):
      separation.load_image(bad)


def test_two_files_are_mixed_separated_and_scored(unet_run, pictures, tmp_path):
  result, step = separation.separate(unet_run, images=(pictures["wide"], pictures["gray"]))
  np.testing.assert_allclose(result.mixture, (result.x1 + result.x2) / 2, atol=1e-6)
  assert result.out1.shape == (1, 32, 32, 3) and result.psnr.shape == (1, 2)
  assert step in (4, 8, 12)
  paths = separation.write(result, str(tmp_path / "out"), "pair", "title")
  assert [os.path.basename(p) for p in paths] == [
      "pair.png", "pair_mixture.png", "pair_out1.png", "pair_out2.png"]
  assert all(os.path.getsize(p) > 0 for p in paths)
  assert Image.open(paths[2]).size == (32, 32)


def test_a_mixture_file_and_random_test_pairs(unet_run, pictures):
  result, _ = separation.separate(unet_run, mixture=pictures["gray"])
  assert result.x1 is None and result.psnr is None and result.out2.shape == (1, 32, 32, 3)
  pairs, _ = separation.separate(unet_run, num_pairs=3, seed=1)
  assert pairs.psnr.shape == (3, 2) and pairs.x1.shape == (3, 32, 32, 3)
  np.testing.assert_allclose(pairs.mixture, (pairs.x1 + pairs.x2) / 2, atol=1e-6)
  again, _ = separation.separate(unet_run, num_pairs=3, seed=1)
  np.testing.assert_array_equal(again.out1, pairs.out1)  # the same pairs for a seed


def test_the_command_separates_two_files(unet_run, pictures, tmp_path):
  out = str(tmp_path / "out")
  two = run_module("experiments.separate", f"--workdir={unet_run}", f"--out={out}",
                   pictures["wide"], pictures["rgba"])
  assert two.returncode == 0, two.stderr[-2000:]
  assert "centre-cropped" in two.stdout and "PSNR" in two.stdout
  assert os.path.exists(os.path.join(out, "wide_rgba.png"))
  assert os.path.exists(os.path.join(out, "wide_rgba_out2.png"))


def test_bad_input_is_one_line(unet_run, pictures, tmp_path):
  with pytest.raises(runs.RunError, match="holds no run"):
    separation.separate(str(tmp_path), images=(pictures["wide"], pictures["gray"]))
  assert_one_line_error(run_module("experiments.separate", f"--workdir={unet_run}",
                                   str(tmp_path / "none.png"), pictures["wide"]), "no such file")
  assert_one_line_error(run_module("experiments.separate", f"--workdir={unet_run}",
                                   pictures["wide"], pictures["gray"], pictures["rgba"]),
                        "two image files")


def test_an_exported_run_holds_the_best_weights_its_config_and_scores(unet_run, copy_run,
                                                                       tmp_path):
  source = copy_run(unet_run)
  out = str(tmp_path / "exported")
  info = runs.export(source, out)
  assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "eval.json", "export.json"]
  _, _, best, step = runs.restore(source, "best")
  _, _, weights, exported_step = runs.restore(out)
  assert info["step"] == step == exported_step and weights.opt_state is None
  for a, b in zip(jax.tree.leaves((steps.eval_params(best), best.model_state)),
                  jax.tree.leaves((weights.params, weights.model_state))):
    np.testing.assert_array_equal(a, b)
  scored = json.loads(json.dumps(evaluation.score_run(out, test_only=True)))  # as eval.json
  assert scored["test"] == logs.read_eval(source)["test"] == logs.read_eval(out)["test"]
  assert "holdout" not in scored and "val" not in scored
  assert runs.describe(out).startswith("the exported unet (:smoke, step")


def test_the_command_separates_with_an_exported_model_from_another_directory(
    unet_run, copy_run, pictures, tmp_path):
  out = str(tmp_path / "exported")
  runs.export(copy_run(unet_run), out)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  result = run_module("experiments.separate", f"--workdir={out}", pictures["wide"],
                      pictures["gray"], cwd=str(elsewhere))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "model: the exported unet (:smoke" in result.stdout
  assert os.path.exists(os.path.join(out, "separations", "wide_gray.png"))
