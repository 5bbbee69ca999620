"""A learning-rate sweep as a user writes it from Hydra's and MLflow's docs (bench/sweeps.py).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python bench/peer_sweep/peer.py -m lr=0.01,0.03,0.1

One MLflow run per job; the tutorial's data and loop (DataLoader, nn.Linear, MSELoss, SGD).
"""

import os

import hydra
import mlflow
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils import data


@hydra.main(version_base="1.3", config_path=".", config_name="peer")
def main(cfg: DictConfig) -> float:
    torch.manual_seed(cfg.seed)
    true_w = torch.tensor([2.8, -1.7, 3.6]).reshape(-1, 1)
    true_b = torch.tensor([3.0])
    X = torch.normal(0, 1, (cfg.num_samples, 3))
    y = torch.matmul(X, true_w) + true_b
    y += torch.normal(0, 0.01, y.shape)
    data_iter = data.DataLoader(data.TensorDataset(X, y), batch_size=cfg.batch_size, shuffle=True)

    net = nn.Linear(3, 1)
    net.weight.data.normal_(0, 0.01)
    net.bias.data.fill_(0)
    loss = nn.MSELoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr)

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("peer")
    with mlflow.start_run():
        mlflow.log_params(OmegaConf.to_container(cfg, resolve=True))  # a flat config
        for epoch in range(cfg.epochs):
            for X_batch, y_batch in data_iter:
                l = loss(net(X_batch), y_batch)  # noqa: E741 (the tutorial's name)
                optimizer.zero_grad()
                l.backward()
                optimizer.step()
            w = net.weight.data.flatten().tolist()
            metrics = {"train/loss": l.item(), "param/b": net.bias.item()}
            metrics.update({f"param/w_{i}": value for i, value in enumerate(w)})
            mlflow.log_metrics(metrics, step=epoch)
    return l.item()


if __name__ == "__main__":
    main()
