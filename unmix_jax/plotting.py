"""Figures of a run, written as PNG files (matplotlib's Agg backend: no screen needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unmix_jax import workdir  # noqa: E402

# One name for each image in every figure, panel and log line.
COLUMNS = ("mixture", "original 1", "original 2", "output 1", "output 2")


def _save(fig, path) -> None:
  """The figure as a PNG at `path` (a local path or a bucket's), whole or not at all."""
  import io

  try:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    workdir.write_bytes(path, png.getvalue())
  finally:
    plt.close(fig)


def reconstructions(path: str, m, x1, x2, x1_hat, x2_hat, title: str = "") -> None:
  """One row per mixture; all arrays [N, 32, 32, 3] in [0, 1] (outputs are clipped).

  The outputs must already be in the better assignment, so output 1 sits under original 1.
  """
  rows = len(m)
  fig, axes = plt.subplots(rows, len(COLUMNS), figsize=(1.6 * len(COLUMNS), 1.6 * rows),
                           squeeze=False)
  for r in range(rows):
    for c, images in enumerate((m, x1, x2, x1_hat, x2_hat)):
      ax = axes[r, c]
      ax.imshow(np.clip(np.asarray(images[r]), 0, 1), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(COLUMNS[c], fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def loss_curves(path: str, records: list[dict], title: str = "") -> None:
  """Train / val / test loss against step from metrics.jsonl records; the mixture baseline's
  test MSE as a dashed line (the loss is summed over both images, so 2x MSE)."""
  fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.8))
  for split, style in (("train", "-"), ("val", "o-"), ("test", "s-")):
    rows = [r for r in records if r["split"] == split and isinstance(r.get("loss"), float)]
    if rows:
      ax_loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split,
                   markersize=3, alpha=0.6 if split == "train" else 1.0)
  tests = [r for r in records if r["split"] == "test"]
  if tests:
    ax_loss.axhline(2 * tests[-1]["baseline_mse"], color="gray", ls="--",
                    label="mixture baseline (test)")
    for key, label in (("psnr", "model"), ("baseline_psnr", "mixture baseline")):
      ax_psnr.plot([r["step"] for r in tests], [r[key] for r in tests], "s-", label=label)
  ax_loss.set(xlabel="step", ylabel="loss (summed MSE of both images)", yscale="log")
  ax_psnr.set(xlabel="step", ylabel="test PSNR (dB, mean over images)")
  for ax in (ax_loss, ax_psnr):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def sample_grid(path: str, y1, y2, title: str = "", columns: int = 4) -> None:
  """Generated pairs [N, 32, 32, 3]: each cell shows decoder 1's image beside decoder 2's."""
  n = len(y1)
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, 2 * columns, figsize=(1.3 * 2 * columns, 1.4 * rows),
                           squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for i in range(n):
    r, c = divmod(i, columns)
    for k, images in enumerate((y1, y2)):
      axes[r, 2 * c + k].imshow(np.clip(np.asarray(images[i]), 0, 1), interpolation="nearest")
      if r == 0:
        axes[r, 2 * c + k].set_title(f"decoder {k + 1}", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def compare_reconstructions(path: str, m, x1, x2, outputs: list, title: str = "") -> None:
  """The same N test mixtures for several runs. m, x1, x2: [N, 32, 32, 3]; outputs: a list of
  (label, output 1, output 2) already in the better assignment. Rows: mixture, the originals,
  then both outputs of each run; columns: mixtures."""
  rows = list(zip(COLUMNS[:3], (m, x1, x2)))
  for label, a, b in outputs:
    rows += [(f"{label}\n{COLUMNS[3]}", a), (f"{label}\n{COLUMNS[4]}", b)]
  n = len(m)
  fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.6, 1.25 * len(rows)),
                           squeeze=False)
  for r, (label, images) in enumerate(rows):
    for c in range(n):
      ax = axes[r, c]
      ax.imshow(np.clip(np.asarray(images[c]), 0, 1), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
  if title:
    fig.suptitle(title, fontsize=10)
  # Keep ~0.35 inch on top for the title; tight_layout alone lets it overlap the first row.
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
  _save(fig, path)


def compare_curves(path: str, runs: dict, title: str = "") -> None:
  """Val and test MSE (better assignment, clipped) against step for several runs, each panel
  with the mixture baseline's MSE on its own pairs dashed. runs: {label: metrics.jsonl records}."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  baselines = {}
  for i, (label, records) in enumerate(runs.items()):
    color = f"C{i}"
    for ax, split in zip(axes, ("val", "test")):
      rows = [r for r in records if r["split"] == split]
      ax.plot([r["step"] for r in rows], [r["mse"] for r in rows], "o-", ms=3, color=color,
              label=label)
      if rows:
        baselines[split] = rows[-1]["baseline_mse"]  # the same pairs for every run
  for ax, split, name in zip(axes, ("val", "test"), ("val (seen images)", "test (unseen images)")):
    if split in baselines:
      line = ax.axhline(baselines[split], color="gray", ls="--",
                        label=f"mixture baseline ({split})")
      if split == "val":
        ax.legend(handles=[line], fontsize=7)
    ax.set(title=name, xlabel="step", ylabel="MSE, better assignment")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def separation_panel(path: str, result, title: str = "") -> None:
  """One row per mixture: the mixture, the two outputs, and where known the two originals with
  the PSNR of the outputs against them (one figure where the outputs share one error).
  `result`: a `separation.Separation`; its notes (how each input file was taken) go under the
  title."""
  known = result.x1 is not None
  columns = [COLUMNS[0], *COLUMNS[3:]] + (list(COLUMNS[1:3]) if known else [])
  rows = len(result.mixture)
  fig, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 1.9 * rows + 0.7),
                           squeeze=False)
  for r in range(rows):
    images = [result.mixture[r], result.out1[r], result.out2[r]]
    if known:
      images += [result.x1[r], result.x2[r]]
    for c, image in enumerate(images):
      ax = axes[r, c]
      ax.imshow(np.clip(np.asarray(image), 0, 1), interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      label = columns[c] if r == 0 else ""
      if known and result.shared_error and c == 0:
        label = f"{label}\noutputs {result.psnr[r].mean():.1f} dB".strip()
      elif known and not result.shared_error and c in (1, 2):
        label = f"{label}\n{result.psnr[r, c - 1]:.1f} dB".strip()
      ax.set_title(label, fontsize=8)
  fig.suptitle("\n".join([title, *result.notes]).strip(), fontsize=8)
  fig.tight_layout()
  _save(fig, path)
