"""Module forms. Each subclasses its torch counterpart, so isinstance checks, repr,
state_dict and train()/eval() behave exactly as torch's."""
import numbers

import torch

from . import functional as F

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "DropPath",
           "DropoutAddLayerNorm", "DropoutAddRMSNorm"]


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


def _hidden(normalized_shape):
    """The normalized size: the fused ops normalize over the last dim only."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
    if len(shape) != 1:
        raise ValueError("dropout_ext: the fused norms normalize over the last dim only: normalized_shape must be an "
                         "int or have one entry, got %s" % (shape,))
    return shape


class DropoutAddLayerNorm(torch.nn.Module):
    """LayerNorm(residual + dropout(input + input_bias)) in one pass (a post-norm block's
    end, as in BERT); prenorm=True also returns the sum h (a pre-norm block's residual
    stream, as in GPT-2 or ViT). Parameters `weight` and `bias` as torch.nn.LayerNorm's, so
    a LayerNorm's state_dict loads into it."""

    def __init__(self, normalized_shape, p: float = 0.5, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, prenorm: bool = False, residual_in_fp32: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__()
        F._check_p(p)
        self.normalized_shape = _hidden(normalized_shape)
        self.p, self.eps, self.elementwise_affine = p, eps, elementwise_affine
        self.prenorm, self.residual_in_fp32 = prenorm, residual_in_fp32
        factory = {"device": device, "dtype": dtype}
        self.weight = torch.nn.Parameter(torch.empty(self.normalized_shape, **factory)) if elementwise_affine else None
        affine_bias = elementwise_affine and bias
        self.bias = torch.nn.Parameter(torch.empty(self.normalized_shape, **factory)) if affine_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, input, residual=None, input_bias=None):
        return F.dropout_add_layer_norm(input, residual, self.weight, self.bias, self.p, self.training, eps=self.eps,
                                        input_bias=input_bias, prenorm=self.prenorm,
                                        residual_in_fp32=self.residual_in_fp32)

    def extra_repr(self) -> str:
        s = "{normalized_shape}, p={p}, eps={eps}, elementwise_affine={elementwise_affine}".format(**self.__dict__)
        if self.prenorm:
            s += ", prenorm=True"
        if self.residual_in_fp32:
            s += ", residual_in_fp32=True"
        return s


class DropoutAddRMSNorm(torch.nn.Module):
    """RMSNorm(residual + dropout(input + input_bias)) in one pass; as DropoutAddLayerNorm
    otherwise. eps=None is torch.finfo(input.dtype).eps, as torch.nn.RMSNorm takes it."""

    def __init__(self, normalized_shape, p: float = 0.5, eps=None, elementwise_affine: bool = True, *,
                 prenorm: bool = False, residual_in_fp32: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        F._check_p(p)
        self.normalized_shape = _hidden(normalized_shape)
        self.p, self.eps, self.elementwise_affine = p, eps, elementwise_affine
        self.prenorm, self.residual_in_fp32 = prenorm, residual_in_fp32
        self.weight = (torch.nn.Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
                       if elementwise_affine else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)

    def forward(self, input, residual=None, input_bias=None):
        return F.dropout_add_rms_norm(input, residual, self.weight, self.p, self.training, eps=self.eps,
                                      input_bias=input_bias, prenorm=self.prenorm,
                                      residual_in_fp32=self.residual_in_fp32)

    def extra_repr(self) -> str:
        s = "{normalized_shape}, p={p}, eps={eps}, elementwise_affine={elementwise_affine}".format(**self.__dict__)
        if self.prenorm:
            s += ", prenorm=True"
        if self.residual_in_fp32:
            s += ", residual_in_fp32=True"
        return s
