"""`unmix separate`: any picture through a trained run or the shipped model."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, run_unmix
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
  wide, note = separation.load_image(pictures["wide"])
  assert wide.shape == (32, 32, 3) and wide.dtype == np.float32 and 0 <= wide.min() <= 1
  assert note == "wide.png (70x50) centre-cropped to 50x50, resized to 32x32"
  gray, _ = separation.load_image(pictures["gray"])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale replicated
  assert separation.load_image(pictures["rgba"])[0].shape == (32, 32, 3)
  # A square crop from the middle: a picture whose sides are a different colour loses them.
  block = np.zeros((40, 80, 3), np.uint8)
  block[:, 20:60] = 255
  Image.fromarray(block).save(tmp_path / "sides.png")
  assert separation.load_image(str(tmp_path / "sides.png"))[0].min() == 1.0
  for bad, needle in ((pictures["text"], "not an image"), (str(tmp_path / "none.png"),
                                                            "no such file"),
                      (str(tmp_path), "is a directory, not an image file")):
    with pytest.raises(separation.ImageError, match=needle):
      separation.load_image(bad)


def _bomb(path, side=15000):
  """A valid PNG header of side x side grayscale pixels with one tiny data chunk: what PIL
  reads before it decodes anything."""
  import struct
  import zlib

  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body +
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                   chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
  return str(path)


def test_pictures_are_taken_as_they_are_upright_wide_and_bounded(tmp_path):
  # A phone picture stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to
  # view): a red top half once upright.
  stored = np.zeros((40, 20, 3), np.uint8)
  stored[:, :10] = (255, 0, 0)  # the left half as stored is the top half upright
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
  upright, note = separation.load_image(str(tmp_path / "phone.jpg"))
  assert "(40x20)" in note  # width x height as seen
  assert upright[:8, :, 0].mean() > 0.9 and upright[-8:, :, 0].mean() < 0.1
  # 16-bit and float pixels scaled to [0, 1], not clipped to white.
  ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
  Image.fromarray(ramp).save(tmp_path / "deep.png")
  deep, _ = separation.load_image(str(tmp_path / "deep.png"))
  np.testing.assert_allclose(deep[..., 0], ramp / 65535, atol=1e-5)
  Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(tmp_path / "float.tiff")
  np.testing.assert_allclose(separation.load_image(str(tmp_path / "float.tiff"))[0], 0.25,
                             atol=1e-6)
  with pytest.raises(separation.ImageError, match="more than 89 megapixels"):
    separation.load_image(_bomb(tmp_path / "bomb.png"))


def test_two_files_are_mixed_separated_and_scored(unet_run, pictures, tmp_path):
  result, step = separation.separate(unet_run, images=(pictures["wide"], pictures["gray"]))
  np.testing.assert_allclose(result.mixture, (result.x1 + result.x2) / 2, atol=1e-6)
  assert result.out1.shape == (1, 32, 32, 3) and result.psnr.shape == (1, 2)
  assert result.shared_error and len(result.notes) == 2
  assert step in (4, 8, 12)
  paths = separation.write(result, str(tmp_path / "out"), "pair", "title")
  assert [os.path.basename(p) for p in paths] == [
      "pair_panel.png", "pair_mixture.png", "pair_out1.png", "pair_out2.png"]
  assert all(os.path.getsize(p) > 0 for p in paths)
  assert Image.open(paths[2]).size == (32, 32)
  again = separation.write(result, str(tmp_path / "out"), "pair", "title")
  assert [os.path.basename(p) for p in again][:2] == ["pair-1_panel.png", "pair-1_mixture.png"]


def test_a_mixture_file_and_random_test_pairs(unet_run, pictures):
  result, _ = separation.separate(unet_run, mixture=pictures["gray"])
  assert result.x1 is None and result.psnr is None and result.out2.shape == (1, 32, 32, 3)
  pairs, _ = separation.separate(unet_run, num_pairs=3, seed=1)
  assert pairs.psnr.shape == (3, 2) and pairs.x1.shape == (3, 32, 32, 3)
  np.testing.assert_allclose(pairs.mixture, (pairs.x1 + pairs.x2) / 2, atol=1e-6)
  again, _ = separation.separate(unet_run, num_pairs=3, seed=1)
  np.testing.assert_array_equal(again.out1, pairs.out1)  # the same pairs for a seed


@pytest.mark.slow
def test_the_command_separates_and_overwrites_nothing(unet_run, pictures, tmp_path):
  mixture = tmp_path / "m.png"
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)).save(mixture)
  (tmp_path / "m_panel.png").write_bytes(b"the user's own file")
  before = {p: p.read_bytes() for p in (mixture, tmp_path / "m_panel.png")}
  result = run_unmix("separate", f"--workdir={unet_run}", "--mixture=m.png", "--out=.",
                     cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert {p: p.read_bytes() for p in before} == before
  assert "input m.png (32x32) resized to 32x32" in result.stdout
  assert (tmp_path / "m-1_panel.png").exists() and (tmp_path / "m-1_out2.png").exists()
  assert_one_line_error(run_unmix("separate", f"--workdir={unet_run}", _bomb(tmp_path / "b.png"),
                                  pictures["wide"], cwd=str(tmp_path)), "more than 89 megapixels")


def test_an_exported_run_holds_the_best_weights_its_config_and_scores(unet_run, copy_run,
                                                                       tmp_path):
  source = copy_run(unet_run)
  out = str(tmp_path / "exported")
  info = runs.export(source, out, evaluation.evaluate_run(source, "best"))
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


@pytest.mark.slow
def test_the_command_separates_with_an_exported_model_from_another_directory(
    unet_run, copy_run, pictures, tmp_path):
  out = str(tmp_path / "exported")
  source = copy_run(unet_run)
  runs.export(source, out, evaluation.evaluate_run(source, "best"))
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  result = run_unmix("separate", f"--workdir={out}", pictures["wide"], pictures["gray"],
                     cwd=str(elsewhere))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "model: the exported unet (:smoke" in result.stdout
  assert os.path.exists(os.path.join(out, "separations", "wide_gray_panel.png"))


# The shipped model (unmix_jax/pretrained/unet-cpu60): scored on the unseen test pairs, it must
# reproduce the scores its eval.json records, which it was exported with.
REEXPORT = ("retrain configs/unet.py:cpu60 and export its best checkpoint again: "
            "unmix export --workdir=runs/unet-cpu60 (README: the shipped model)")


@pytest.mark.slow
def test_the_shipped_weights_load_under_todays_model_and_score_as_exported(tfds_data_dir):
  try:
    scored = evaluation.score_run(runs.pretrained_dir(), test_only=True)
  except Exception as e:  # noqa: BLE001 - any way the weights no longer fit the model
    pytest.fail(f"the shipped weights no longer load under today's model code "
                f"({type(e).__name__}: {str(e)[:300]}); {REEXPORT}")
  recorded = logs.read_eval(runs.pretrained_dir())["test"]
  gain, expected = scored["test"]["psnr_gain"]["mean"], recorded["psnr_gain"]["mean"]
  assert gain == pytest.approx(expected, abs=0.01), (
      f"the shipped weights separate the unseen test pairs at {gain:+.3f} dB over the mixture, "
      f"not the {expected:+.3f} dB they were exported with: the model code computes something "
      f"else with them; {REEXPORT}")
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(runs.pretrained_dir()) for f in fs)
  assert size < 5e6, f"the shipped model takes {size / 1e6:.1f} MB; at most 5 MB"


@pytest.mark.slow
def test_the_command_separates_with_the_shipped_model_from_any_directory(pictures, tmp_path,
                                                                         tfds_data_dir):
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  result = run_unmix("separate", pictures["wide"], pictures["gray"], cwd=str(elsewhere))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "model: the shipped unet (:cpu60" in result.stdout
  assert "PSNR against the originals: one figure for both outputs" in result.stdout
  assert os.path.exists(elsewhere / "separations" / "wide_gray_panel.png")
  assert_one_line_error(run_unmix("separate", str(elsewhere), pictures["gray"],
                                  cwd=str(elsewhere)), "is a directory, not an image file")
