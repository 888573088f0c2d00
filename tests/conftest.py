import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data", "tensorflow_datasets")


@pytest.fixture(scope="session")
def tfds_data_dir() -> str:
  """The prepared CIFAR-10 copy: $TFDS_DATA_DIR, else ../shared/data/tensorflow_datasets."""
  path = os.environ.get("TFDS_DATA_DIR") or SHARED_DATA
  if not os.path.isdir(os.path.join(path, "cifar10")):
    pytest.fail(f"end-to-end tests need a tfds data dir with cifar10; none at {path}. "
                "Set TFDS_DATA_DIR (see README).")
  return os.path.abspath(path)
