"""The project's three networks and train step in PyTorch, for `benchmark --compare=torch` only.

Same layer shapes as `unmix_jax.models` (so the same parameter counts), same step: gather the
pairs from uint8 images, mix, forward, PIT MSE (+ beta * KL for the VAE), backward, global-norm
clipping, AdamW. Eager mode, channels_last (NHWC) memory format, float32. Installed with
`pip install -e '.[torch]'`; nothing in `unmix_jax` imports torch.
"""

from __future__ import annotations

import time

import numpy as np

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError as e:  # Optional extra: say how to get it instead of a traceback.
  from unmix_jax.config_checks import ConfigError
  raise ConfigError("--compare=torch needs PyTorch: pip install -e '.[torch]' "
                    "(CPU build torch==2.13.0).") from e


def _out_channels(model_cfg) -> int:
  return 3 if model_cfg.mixture_consistent else 6


class DoubleConv(nn.Sequential):
  def __init__(self, c_in, c_out):
    super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                     nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
  def __init__(self, model_cfg):
    super().__init__()
    f = [int(x) for x in model_cfg.features]
    self.down = nn.ModuleList(DoubleConv(i, o) for i, o in zip([3] + f[:-1], f))
    self.ups = nn.ModuleList(nn.ConvTranspose2d(i, o, 2, stride=2)
                             for i, o in zip(f[:0:-1], f[-2::-1]))
    self.up_convs = nn.ModuleList(DoubleConv(2 * o, o) for o in f[-2::-1])
    self.head = nn.Conv2d(f[0], _out_channels(model_cfg), 1)

  def forward(self, m):
    x, skips = m, []
    for i, block in enumerate(self.down):
      x = block(F.max_pool2d(x, 2) if i else x)
      skips.append(x)
    for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips[:-1])):
      x = conv(torch.cat([up(x), skip], dim=1))
    return self.head(x), None


def _stage(c_in, c_out, up, batch_norm):
  conv = (nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1) if up
          else nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
  return [conv] + ([nn.BatchNorm2d(c_out, momentum=0.1)] if batch_norm else []) + [nn.ReLU()]


def _encoder(widths, batch_norm):
  return nn.Sequential(*[layer for i, o in zip([3] + list(widths[:-1]), widths)
                         for layer in _stage(i, o, False, batch_norm)])


def _decoder(c_in, widths, batch_norm):
  layers = [layer for i, o in zip([c_in] + list(widths[:-1]), widths)
            for layer in _stage(i, o, True, batch_norm)]
  return nn.Sequential(*layers, nn.Conv2d(widths[-1], 3, 3, padding=1))


class AE(nn.Module):
  def __init__(self, model_cfg):
    super().__init__()
    enc, dec = list(model_cfg.encoder_widths), list(model_cfg.decoder_widths)
    self.encoder = _encoder(enc, True)
    self.decoders = nn.ModuleList(_decoder(enc[-1], dec, True) for _ in range(2))

  def forward(self, m):
    h = self.encoder(m)
    return torch.cat([d(h) for d in self.decoders], dim=1), None


class VAE(nn.Module):
  def __init__(self, model_cfg):
    super().__init__()
    enc, dec = list(model_cfg.encoder_widths), list(model_cfg.decoder_widths)
    self.grid, self.c = 32 // 2 ** len(enc), enc[-1]
    self.latent = int(model_cfg.latent_dim)
    self.encoder = _encoder(enc, False)
    self.posterior = nn.Linear(self.grid ** 2 * self.c, 2 * self.latent)
    self.dense = nn.ModuleList(nn.Linear(self.latent, self.grid ** 2 * self.c) for _ in range(2))
    self.decoders = nn.ModuleList(_decoder(self.c, dec, False) for _ in range(2))

  def forward(self, m):
    mu, logvar = self.posterior(self.encoder(m).flatten(1)).chunk(2, dim=1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    ys = [d(F.relu(lin(z)).view(-1, self.c, self.grid, self.grid))
          for lin, d in zip(self.dense, self.decoders)]
    return torch.cat(ys, dim=1), (mu, logvar)


MODELS = {"unet": UNet, "ae": AE, "vae": VAE}


class TorchStep:
  """`run(n)`: seconds for n train steps (each synchronous, as eager PyTorch on the CPU is)."""

  name = "torch"

  def __init__(self, config, seed: int = 0):
    torch.manual_seed(seed)
    self.config = config
    self.model = MODELS[config.model.name](config.model).to(memory_format=torch.channels_last)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.train.lr,
                                 weight_decay=config.train.weight_decay)
    rng = np.random.default_rng(seed)
    n = config.data.num_images
    self.images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    self.pairs = torch.from_numpy(rng.integers(0, n, (4096, 2)))
    self.batch = config.train.batch_size
    self.params = sum(p.numel() for p in self.model.parameters())
    self._i = 0

  def _step(self, idx):
    x = self.images[idx].float().div_(255.0)  # [B, 2, 3, 32, 32]
    x1 = x[:, 0].contiguous(memory_format=torch.channels_last)
    x2 = x[:, 1].contiguous(memory_format=torch.channels_last)
    m = (x1 + x2) / 2
    y, aux = self.model(m)
    if self.config.model.mixture_consistent:
      d = y if y.shape[1] == 3 else (y[:, :3] - y[:, 3:]) / 2
      a, b = m + d, m - d
    else:
      a, b = y[:, :3], y[:, 3:]
    err = lambda p, t: ((p - t) ** 2).mean(dim=(1, 2, 3))
    loss = torch.minimum(err(a, x1) + err(b, x2), err(a, x2) + err(b, x1)).mean() / 2
    if aux is not None:
      mu, logvar = aux
      kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(dim=1).mean()
      loss = loss + self.config.model.beta * kl
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
    self.opt.step()
    return loss

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      start = (self._i * self.batch) % (len(self.pairs) - self.batch + 1)
      self._i += 1
      loss = self._step(self.pairs[start:start + self.batch])
    float(loss.detach())
    return time.perf_counter() - t0

  def describe(self) -> dict:
    return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_params": self.params, "torch_mode": "eager, channels_last, float32"}


def layer_step(kind: str, x_shape, kernel_shape, strides):
  """A callable running forward + backward (input and weight gradients) of one conv layer the
  size of ours: x [B, H, W, Cin] and kernel [kh, kw, Cin, Cout] as in JAX, channels_last here.
  Padding k // 2 (transposed: output s * H), which matches 'SAME' in output size and FLOPs."""
  b, h, w, cin = x_shape
  kh, kw, _, cout = kernel_shape
  pad = ((kh - 1) // 2, (kw - 1) // 2)
  if kind == "ConvTranspose":
    out_pad = tuple(s - k + 2 * p for s, k, p in zip(strides, (kh, kw), pad))
    layer = nn.ConvTranspose2d(cin, cout, (kh, kw), tuple(strides), pad, out_pad)
  else:
    layer = nn.Conv2d(cin, cout, (kh, kw), tuple(strides), pad)
  layer = layer.to(memory_format=torch.channels_last)
  x = torch.randn(b, cin, h, w).to(memory_format=torch.channels_last).requires_grad_(True)

  def run():
    x.grad = None
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y ** 2).sum().backward()
    return tuple(y.shape)  # [B, Cout, Ho, Wo]
  return run


def load(config) -> TorchStep:
  return TorchStep(config)
