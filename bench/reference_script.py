"""The reference tutorial (shared/seed/linear-regression-concise-pytorch.md) as a script.

Run as the tutorial has it: `python bench/reference_script.py [lr]` (lr defaults to 0.03, so a
benchmark sweep can run it once per learning rate).
"""

import sys

import torch
from torch import nn
from torch.utils import data


def synthetic_data(w, b, num_samples) -> tuple[torch.Tensor, torch.Tensor]:
    num_features = w.shape[0]
    X = torch.normal(0, 1, (num_samples, num_features))
    y = torch.matmul(X, w) + b
    y += torch.normal(0, 0.01, y.shape)  # Adding noise
    return X, y


true_w = torch.tensor([2.8, -1.7, 3.6]).reshape(-1, 1)
true_b = torch.tensor([3.0])
num_samples = 1000
features, labels = synthetic_data(true_w, true_b, num_samples)

batch_size = 10
dataset = data.TensorDataset(features, labels)
data_iter = data.DataLoader(dataset, batch_size=batch_size, shuffle=True)

num_features = features.shape[1]
net = nn.Linear(num_features, 1)
net.weight.data.normal_(0, 0.01)
net.bias.data.fill_(0)
loss = nn.MSELoss()
optimizer = torch.optim.SGD(net.parameters(), lr=float(sys.argv[1]) if len(sys.argv) > 1 else 0.03)

num_epochs = 3
for epoch in range(num_epochs):
    for X, y in data_iter:
        y_hat = net(X)
        l = loss(y_hat, y)  # noqa: E741 (the tutorial's name)
        optimizer.zero_grad()
        l.backward()
        optimizer.step()
    print(f"Epoch {epoch + 1}, Loss: {l.item():.5f}")
