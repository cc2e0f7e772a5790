"""The source lesson's MNIST script, as it stands, minus the plot window: the baseline.

torchvision MNIST + ToTensor + DataLoader(batch 64, no shuffle) + the Flatten-784-128-256-10
sigmoid network + SGD lr 0.2, 10 epochs, then the test set. Reads MNIST from $MNIST_DATA_DIR
(or data/) instead of downloading it.
"""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

root = os.environ.get("MNIST_DATA_DIR", "data")
train_data = datasets.MNIST(root=root, train=True, download=False, transform=ToTensor())
test_data = datasets.MNIST(root=root, train=False, download=False, transform=ToTensor())
train_dataloader = DataLoader(train_data, batch_size=64)
test_dataloader = DataLoader(test_data, batch_size=64)

for x, y in test_dataloader:
    print(f"shape of x [n,c,h,w]: {x.shape}")
    print(f"shape of y: {y.shape} {y.dtype}")
    break

device = (
    "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
)
print(f"use {device}")


class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.Flatten = nn.Flatten()
        self.hidden1 = nn.Linear(28 * 28, 128)
        self.hidden2 = nn.Linear(128, 256)
        self.out = nn.Linear(256, 10)

    def forward(self, x):
        x = self.Flatten(x)
        x = torch.sigmoid(self.hidden1(x))
        x = torch.sigmoid(self.hidden2(x))
        return self.out(x)


model = NeuralNetwork().to(device)
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)


def train(dataloader, model, loss_fn, optimizer):
    model.train()
    batch_size_num = 1
    for x, y in dataloader:
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = loss.item()
        if batch_size_num % 400 == 0:
            print(f"loss: {loss:>7f} [number: {batch_size_num}]")
        batch_size_num += 1


def test(dataloader, model, loss_fn):
    size, num_batches = len(dataloader.dataset), len(dataloader)
    model.eval()
    test_loss, correct = 0, 0
    with torch.no_grad():
        for x, y in dataloader:
            x, y = x.to(device), y.to(device)
            pred = model(x)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).type(torch.float).sum().item()
    test_loss /= num_batches
    correct /= size
    print(f"Test result:\n Accuracy: {(100 * correct)}%, Avg loss: {test_loss}")
    return correct


epochs = int(os.environ.get("LESSON_EPOCHS", 10))
for t in range(epochs):
    print(f"Epoch {t + 1}\n...............")
    train(train_dataloader, model, loss_fn, optimizer)
test_accuracy = test(test_dataloader, model, loss_fn)
print(f"test/acc {test_accuracy:.4f}")
