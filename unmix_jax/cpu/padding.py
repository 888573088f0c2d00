"""lax's 'SAME' padding along one axis, shared by the matrix-product forms (`layers.py`) and
oneDNN's calls (`onednn.py`), which must pad exactly as `lax` does to give its results."""


def same(size: int, k: int, s: int) -> tuple[int, int]:
  """(before, after) padding of a stride-s conv with kernel k: output ceil(size / s)."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def transposed(k: int, s: int) -> tuple[int, int]:
  """(before, after) padding of the stride-dilated input in lax.conv_transpose(padding='SAME')
  (lax's `_conv_transpose_padding`): output size * s."""
  pad_len = k + s - 2
  before = k - 1 if s > k - 1 else -(-pad_len // 2)
  return before, pad_len - before
