"""The speed floor: the same network and batch size as a bare loop over pre-loaded tensors.

No framework, no DataLoader: index a random batch, scale, step. Prints one line per epoch and
`epoch_seconds_median <s>` at the end.
"""

import os
import statistics
import sys
import time

import torch
from torch import nn

from mnist_lightning.data import to_model_input
from mnist_lightning.mnist_files import load_mnist
from mnist_lightning.network import MLP

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
images, labels = load_mnist(os.environ.get("MNIST_DATA_DIR", "data"), download=False)["train"]
images, labels = images.to(device), labels.to(device)
model = MLP("sigmoid").to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
loss_fn = nn.CrossEntropyLoss()
seconds = []
for epoch in range(epochs):
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    order = torch.randperm(len(labels), device=device)
    for start in range(0, len(labels), 64):
        index = order[start : start + 64]
        loss = loss_fn(model(to_model_input(images[index])), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds.append(time.perf_counter() - started)
    print(f"epoch {epoch + 1}: {seconds[-1]:.3f} s  loss {loss.item():.4f}")
print(f"epoch_seconds_median {statistics.median(seconds):.4f}")
