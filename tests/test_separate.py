"""experiments.separate: any picture through a trained run."""

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, run_module
from unmix_jax import separation


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


def test_the_command_separates_files_a_mixture_and_test_pairs(unet_run, pictures, tmp_path):
  out = str(tmp_path / "out")
  two = run_module("experiments.separate", f"--workdir={unet_run}", f"--out={out}",
                   pictures["wide"], pictures["rgba"])
  assert two.returncode == 0, two.stderr[-2000:]
  assert "centre-cropped" in two.stdout and "PSNR" in two.stdout
  assert os.path.exists(os.path.join(out, "wide_rgba.png"))
  one = run_module("experiments.separate", f"--workdir={unet_run}", f"--out={out}",
                   f"--mixture={pictures['gray']}")
  assert one.returncode == 0, one.stderr[-2000:]
  assert "PSNR" not in one.stdout and os.path.exists(os.path.join(out, "gray_out2.png"))
  pairs = run_module("experiments.separate", f"--workdir={unet_run}", f"--out={out}", "--num=2")
  assert pairs.returncode == 0, pairs.stderr[-2000:]
  assert pairs.stdout.count("PSNR") == 2
  assert os.path.exists(os.path.join(out, "test_pairs_out1_1.png"))


@pytest.mark.parametrize("case", ["missing", "text", "no_run", "three"])
def test_bad_input_is_one_line(case, unet_run, pictures, tmp_path):
  args = {"missing": [f"--workdir={unet_run}", str(tmp_path / "none.png"), pictures["wide"]],
          "text": [f"--workdir={unet_run}", pictures["text"], pictures["wide"]],
          "no_run": [f"--workdir={tmp_path}", pictures["wide"], pictures["gray"]],
          "three": [f"--workdir={unet_run}", pictures["wide"], pictures["gray"],
                    pictures["rgba"]]}[case]
  needle = {"missing": "no such file", "text": "not an image", "no_run": "holds no run",
            "three": "two image files"}[case]
  assert_one_line_error(run_module("experiments.separate", *args), needle)
