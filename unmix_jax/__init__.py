"""unmix_jax: recover two CIFAR-10 images from their pixel average (U-Net, autoencoder, VAE).

  configs/ (installed as unmix_jax.configs)  presets of each architecture
  models/     the architectures and the registry; models/layers.py is the backend seam
  backend.py  which layers compute the convolutions (`config.train.conv_impl`)
  cpu/        the CPU backend (oneDNN, matrix-product convs), imported only when chosen
  data.py     CIFAR-10 and the pair sets;  losses.py, metrics.py  PIT loss and scores
  steps.py    the jitted train and eval steps;  train.py  the training loop
  checkpoint.py, logs.py, runs.py, evaluation.py, compare.py, plotting.py  around it
"""
