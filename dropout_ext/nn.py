"""Module forms. Each subclasses its torch counterpart, so isinstance checks, repr,
state_dict and train()/eval() behave exactly as torch's."""
import torch

from . import functional as F

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "DropPath"]


def _vanilla_repr(module, base):
    return base if module.scale_train else base + ", scale_train=False"


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout on dropout_ext's kernels; scale_train=False gives vanilla dropout
    (no scaling in training, input * (1 - p) in eval)."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, scale_train: bool = True) -> None:
        super().__init__(F._check_p(p), inplace)
        self.p = p
        self.scale_train = scale_train

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.p, self.training, self.inplace, scale_train=self.scale_train)

    def extra_repr(self) -> str:
        return _vanilla_repr(self, super().extra_repr())


class Dropout1d(torch.nn.Dropout1d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(torch.nn.Dropout2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(torch.nn.Dropout3d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace)


class AlphaDropout(torch.nn.AlphaDropout):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.alpha_dropout(input, self.p, self.training)


class FeatureAlphaDropout(torch.nn.FeatureAlphaDropout):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.feature_alpha_dropout(input, self.p, self.training)


class DropPath(torch.nn.Module):
    """Stochastic depth per sample (timm's DropPath): drops whole samples of a residual
    branch with probability p, scaling kept ones by 1 / (1 - p)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        F._check_p(p)
        self.p = p

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.drop_path(input, self.p, self.training)

    def extra_repr(self) -> str:
        return "p=%s" % self.p
