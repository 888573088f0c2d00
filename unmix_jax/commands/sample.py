"""Generate image pairs from a trained VAE: z ~ N(0, I) through both decoders.

  unmix sample --workdir=runs/vae-cpu [--num=32] [--seed=0]

Writes <workdir>/samples.png. A plain autoencoder or U-Net has no prior to sample from.
"""


from absl import flags, logging

from unmix_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a trained VAE.", required=True)
_NUM = flags.DEFINE_integer("num", 32, "Number of generated pairs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the latent draws.")


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  import jax
  from flax import nnx

  from unmix_jax import plotting, runs, workdir

  with cli.one_line_errors():
    config, graphdef, state, step = runs.restore(_WORKDIR.value, "best")
  model = nnx.merge(graphdef, state.params, state.model_state)
  if not hasattr(model, "decode"):
    cli.fail(f"the run in {_WORKDIR.value} is a {config.model.name!r} model; only a VAE "
             "(configs/vae.py) has a prior N(0, I) over its latent to sample from. A plain "
             "autoencoder's bottleneck has no such distribution.")
  z = jax.random.normal(jax.random.PRNGKey(_SEED.value), (_NUM.value, model.latent_dim))
  y1, y2 = jax.jit(lambda z: model.decode(z))(z)
  path = workdir.path(_WORKDIR.value) / "samples.png"
  with cli.one_line_errors():
    plotting.sample_grid(path, y1, y2,
                         title=f"VAE samples, z ~ N(0, I), checkpoint step {step}")
  print(f"wrote {path} ({_NUM.value} pairs from checkpoint step {step})")


def run():
  cli.run(main)
