"""dropout_ext in a Hugging Face transformers model, in one line:

    model = dropout_ext.integrations.transformers.apply(model)

apply(model, *, fuse=True) changes the model in place and returns it:

1. dropout_ext.convert(model): every torch dropout module (embeddings, hidden states,
   classifier heads) runs this package's kernels.
2. The attention-probability dropout. A model with eager attention is switched to the
   attention implementation "dropout_ext_eager", registered in transformers'
   AttentionInterface (and in AttentionMaskInterface with eager's mask). It calls the
   model's own eager_attention_forward (from its modeling file), whose
   torch.nn.functional.dropout call is answered by dropout_ext.functional.dropout for
   the duration of that call (a TorchFunctionMode, nothing patched): eager's math, this
   package's masks. sdpa, flash and flex attention drop inside their own kernels: they
   are left as they are, with a warning (load with attn_implementation="eager").
3. fuse=True: the post-norm output blocks of the BERT family, BertSelfOutput,
   BertOutput, RobertaSelfOutput and RobertaOutput, LayerNorm(dropout(dense(h)) + x),
   become DropoutAddLayerNormOutput: dense, then one dropout_add_layer_norm pass. It
   holds the block's own dense, dropout and LayerNorm under the same names, so the
   parameters and state_dict keys are unchanged. It draws its mask exactly as the
   dropout it replaces: fuse=True and fuse=False give the same masks for the same RNG
   state. Pre-norm blocks (GPT-2, ViT) are not fused: their dropout, residual add and
   next norm are spread over the library's block forward (GPT2Block, ViTLayer) and the
   modules it calls, so fusing them would take a copy of that forward, which would drift
   from the library's.

Supported: transformers >= 5.0, models of the BERT, RoBERTa, GPT-2 and ViT families
(any head); anything else raises a TypeError or ValueError saying so. Evaluation outputs
are those of the model before apply (to the norm's rounding in a fused block).
"""
import ast
import inspect
import re
import sys
import textwrap
import warnings

import torch
from torch.overrides import TorchFunctionMode

from .. import functional as F
from .. import nn as _nn
from .._convert import convert

__all__ = ["apply", "ATTENTION", "DropoutAddLayerNormOutput", "eager_attention"]

ATTENTION = "dropout_ext_eager"  # the attention implementation's name in transformers' registries
MIN_VERSION = (5, 0)

# family -> (its modeling module, its post-norm output blocks' classes)
FAMILIES = {
    "bert": ("transformers.models.bert.modeling_bert", ("BertSelfOutput", "BertOutput")),
    "roberta": ("transformers.models.roberta.modeling_roberta", ("RobertaSelfOutput", "RobertaOutput")),
    "gpt2": ("transformers.models.gpt2.modeling_gpt2", ()),
    "vit": ("transformers.models.vit.modeling_vit", ()),
}

# The forward every fused block class must have (compared as syntax trees, so that a
# library version that changes it is refused rather than fused into other math).
_OUTPUT_FORWARD = """
def forward(self, hidden_states, input_tensor):
    hidden_states = self.dense(hidden_states)
    hidden_states = self.dropout(hidden_states)
    hidden_states = self.LayerNorm(hidden_states + input_tensor)
    return hidden_states
"""

# modeling module name -> its eager_attention_forward; filled by apply
_EAGER = {}


# ----------------------------------------------------------------------------- attention


class _PackageDropout(TorchFunctionMode):
    """torch.nn.functional.dropout answered by dropout_ext.functional.dropout; every other
    torch function runs as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.dropout:
            return F.dropout(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def eager_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """The "dropout_ext_eager" attention: the model's own eager attention with this
    package's dropout on the attention probabilities."""
    eager = _EAGER.get(type(module).__module__)
    if eager is None:
        raise TypeError("dropout_ext: attention implementation %r is set up for %s models by "
                        "dropout_ext.integrations.transformers.apply; %s is not one of them"
                        % (ATTENTION, ", ".join(FAMILIES), type(module).__name__))
    if not module.training:  # no dropout: eager itself, without the mode's per-call cost
        return eager(module, query, key, value, attention_mask, *args, **kwargs)
    with _PackageDropout():
        return eager(module, query, key, value, attention_mask, *args, **kwargs)


def _drops_attention(config):
    """Whether the config's attention-probability dropout may be nonzero (unknown: yes)."""
    for name in ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"):
        if hasattr(config, name):
            return getattr(config, name) > 0
    return True


# --------------------------------------------------------------------------- fused blocks


class DropoutAddLayerNormOutput(torch.nn.Module):
    """A BERT-family output block, LayerNorm(dropout(dense(hidden_states)) + input_tensor),
    with the dropout, the add and the LayerNorm in one dropout_add_layer_norm pass. It is
    the block's own state (dense, dropout, LayerNorm, hooks, training flag) under another
    class: same parameters, same state_dict keys. `replaced` names the block's class."""

    @classmethod
    def from_block(cls, block):
        new = cls.__new__(cls)
        new.__dict__.update(block.__dict__)
        new.replaced = type(block).__name__
        return new

    def forward(self, hidden_states, input_tensor):
        x = self.dense(hidden_states)
        drop, norm = self.dropout, self.LayerNorm
        if x.dtype != input_tensor.dtype or x.shape != input_tensor.shape or torch.is_autocast_enabled(
                x.device.type):
            # torch's rules then (type promotion; autocast's float32 layer_norm), same mask draw
            return norm(drop(x) + input_tensor)
        return F.dropout_add_layer_norm(x, input_tensor, norm.weight, norm.bias, drop.p, drop.training, eps=norm.eps)

    def extra_repr(self):
        return "fused " + self.replaced


def _fusable(block):
    """The block's dropout and norm are ones the fused op computes exactly."""
    drop, norm = block._modules.get("dropout"), block._modules.get("LayerNorm")
    return (type(drop) is _nn.Dropout and drop.scale_train and not drop.inplace
            and type(norm) is torch.nn.LayerNorm and len(norm.normalized_shape) == 1)


def _statements(source):
    fn = ast.parse(textwrap.dedent(source)).body[0]
    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(
        getattr(fn.body[0], "value", None), ast.Constant) else fn.body  # without a docstring
    return [a.arg for a in fn.args.args], [ast.dump(s) for s in body]


def _check_output_block(cls, version):
    try:
        same = _statements(inspect.getsource(cls.forward)) == _statements(_OUTPUT_FORWARD)
    except (OSError, TypeError, SyntaxError):
        same = False
    if not same:
        raise ValueError("dropout_ext.integrations.transformers.apply: %s.forward in transformers %s is not "
                         "LayerNorm(dropout(dense(hidden_states)) + input_tensor) as this adapter knows it; "
                         "apply(model, fuse=False) leaves it unfused" % (cls.__name__, version))


def _check_eager(module, version):
    """The modeling file's eager attention exists and makes a functional dropout call
    (routing it must not be a silent no-op)."""
    fn = getattr(module, "eager_attention_forward", None)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn))) if fn is not None else None
    except (OSError, TypeError, SyntaxError):
        tree = None
    calls = tree is not None and any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "dropout"
        for n in ast.walk(tree))
    if not calls:
        raise ValueError("dropout_ext.integrations.transformers.apply: %s in transformers %s has no "
                         "eager_attention_forward with a functional dropout call to route"
                         % (module.__name__, version))
    return fn


# ---------------------------------------------------------------------------------- apply


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("dropout_ext.integrations.transformers needs the transformers package "
                          "(pip install transformers)") from e
    version = transformers.__version__
    numbers = tuple(int(v) for v in re.findall(r"\d+", version)[:2])
    if numbers < MIN_VERSION or not hasattr(transformers, "AttentionInterface"):
        raise ValueError("dropout_ext.integrations.transformers.apply supports transformers >= %d.%d, found %s"
                         % (MIN_VERSION + (version,)))
    return transformers


def _family(cls):
    for name, (module, _) in FAMILIES.items():
        if cls.__module__ == module:
            return name
    return None


def apply(model, *, fuse=True):
    """Put dropout_ext into a transformers model, in place (see the module's docstring):
    its dropout modules converted, eager attention's probability dropout routed through
    this package, and with fuse=True the BERT family's output blocks fused into
    dropout_add_layer_norm. Returns model."""
    transformers = _transformers()
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    supported = "models of the %s families (transformers.models.{%s})" % (
        ", ".join(FAMILIES), ",".join(FAMILIES))
    if not isinstance(model, PreTrainedModel):
        raise TypeError("dropout_ext.integrations.transformers.apply: expected a transformers PreTrainedModel, got "
                        "%s; supported: %s. dropout_ext.convert(model) converts any model's dropout modules"
                        % (type(model).__name__, supported))
    if not isinstance(fuse, bool):
        raise TypeError("dropout_ext.integrations.transformers.apply: fuse must be a bool, got %r" % (fuse,))
    families = {}
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            family = _family(type(sub))
            if family is None:
                raise TypeError("dropout_ext.integrations.transformers.apply: %s (%s) is not supported; supported: "
                                "%s. dropout_ext.convert(model) converts its dropout modules"
                                % (type(sub).__name__, type(sub).__module__, supported))
            families[family] = sys.modules[FAMILIES[family][0]]
    version = transformers.__version__

    # every check before the first change: an error leaves the model as it was
    eagers = {m.__name__: _check_eager(m, version) for m in families.values()}
    blocks = ()
    if fuse:
        classes = []
        for family, module in families.items():
            for name in FAMILIES[family][1]:
                cls = getattr(module, name, None)
                if cls is None:
                    raise ValueError("dropout_ext.integrations.transformers.apply: transformers %s has no %s.%s; "
                                     "apply(model, fuse=False) leaves the output blocks unfused"
                                     % (version, module.__name__, name))
                _check_output_block(cls, version)
                classes.append(cls)
        blocks = tuple(classes)
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}
    attention = {c._attn_implementation for c in configs.values()}
    others = sorted(a for a in attention if a not in ("eager", ATTENTION))
    if others and any(_drops_attention(c) for c in configs.values()):
        warnings.warn("dropout_ext.integrations.transformers.apply: attention implementation %s drops the attention "
                      "probabilities inside its own kernel, with torch's RNG; load the model with "
                      "attn_implementation=\"eager\" to route that dropout through dropout_ext" % ", ".join(others),
                      stacklevel=2)

    convert(model)
    _EAGER.update(eagers)
    AttentionInterface.register(ATTENTION, eager_attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    # GPT-2's reorder_and_upcast_attn runs its own attention only under the name "eager",
    # dropping through its attn_dropout module, which convert has swapped: kept
    keep_eager = getattr(model.config, "reorder_and_upcast_attn", False) and "gpt2" in families
    if model.config._attn_implementation == "eager" and not keep_eager:
        model.set_attn_implementation(ATTENTION)
    if blocks:
        for parent in list(model.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) in blocks and _fusable(child):
                    parent._modules[name] = DropoutAddLayerNormOutput.from_block(child)
    return model
