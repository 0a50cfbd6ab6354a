import torch

# The test problems are tiny: OpenMP threads only contend (a 32x16 BatchNorm took 40 ms with
# two threads on a busy 2-core CI machine, 0.1 ms with one).
torch.set_num_threads(1)
