"""Suite-wide settings. Test models are tiny: one intra-op thread is as fast as two for them and, on a shared
2-core machine, keeps them from spinning against each other's threads. Subprocesses inherit the variable."""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
