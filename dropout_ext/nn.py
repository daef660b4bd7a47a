"""Module forms. Each subclasses its torch counterpart, so isinstance checks, repr,
state_dict and train()/eval() behave exactly as torch's."""
import torch

from . import functional as F

__all__ = ["Dropout"]


def _vanilla_repr(module, base):
    return base if module.scale_train else base + ", scale_train=False"


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout on dropout_ext's kernels; scale_train=False gives vanilla dropout
    (no scaling in training, input * (1 - p) in eval)."""

    def __init__(self, p=0.5, inplace=False, *, scale_train=True):
        super().__init__(F._check_p(p), inplace)
        self.p = p
        self.scale_train = scale_train

    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace, scale_train=self.scale_train)

    def extra_repr(self):
        return _vanilla_repr(self, super().extra_repr())
