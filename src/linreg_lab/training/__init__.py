"""Training: the minibatch loop (autograd and analytic engines) and what it measures."""

from linreg_lab.training.settings import TrainerSettings

__all__ = ["TrainerSettings"]
