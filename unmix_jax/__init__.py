"""unmix_jax: recover two CIFAR-10 images from their pixel average (U-Net, autoencoder, VAE).

Importing the package tells glibc's malloc to keep freed memory for reuse (`host_memory`): on
the CPU backend every train step otherwise maps its buffers afresh and pays for the page faults
(half of a U-Net step on a 2-core machine). It has to happen before JAX starts its CPU threads,
which is why it happens here.
"""

from unmix_jax import host_memory

host_memory.keep_freed_memory()
