"""The speed floor: one epoch of the project's work with no framework at all.

The same network, batch size, fused SGD and in-memory tensors as the default run (the
datamodule's 55,000/5,000 split), the same scaling and normalisation, and the same CPU thread
count; each epoch trains on every batch and then validates in batches of 1,000, as an epoch of
the project does. Prints one line per epoch and `epoch_seconds_median <s>` at the end.

    python benchmarks/raw_loop.py [epochs] [cpu_threads]
"""

import statistics
import sys
import time

import torch
from torch import nn

from mnist_lightning.data import to_model_input
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.models.networks import MLP

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.set_num_threads(threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
datamodule = MNISTDataModule()  # $MNIST_DATA_DIR, else data/
datamodule.prepare_data()
datamodule.setup("fit")
train, val = datamodule.splits["train"], datamodule.splits["val"]
train_images, train_labels = train.images.to(device), train.labels.to(device)
val_images, val_labels = val.images.to(device), val.labels.to(device)
model = MLP("sigmoid").to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.2, fused=True)
loss_fn = nn.CrossEntropyLoss()
seconds = []
for epoch in range(epochs):
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    order = torch.randperm(len(train_labels), device=device)
    for start in range(0, len(order), 64):
        index = order[start : start + 64]
        x = to_model_input(train_images.index_select(0, index))
        loss = loss_fn(model(x), train_labels.index_select(0, index))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(val_labels), 1000):
            logits = model(to_model_input(val_images[start : start + 1000]))
            correct += int((logits.argmax(1) == val_labels[start : start + 1000]).sum())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds.append(time.perf_counter() - started)
    print(f"epoch {epoch + 1}: {seconds[-1]:.3f} s  val/acc {correct / len(val_labels):.4f}")
print(f"epoch_seconds_median {statistics.median(seconds):.4f}")
