"""dropout_ext.convert: put this package's dropout modules into a model that was built
with torch's, in place, as torch.nn.SyncBatchNorm.convert_sync_batchnorm does for norms."""
import torch

from . import nn

# torch's module class -> ours (a subclass of it, so isinstance checks still hold).
_SWAPS = {
    torch.nn.Dropout: nn.Dropout,
    torch.nn.Dropout1d: nn.Dropout1d,
    torch.nn.Dropout2d: nn.Dropout2d,
    torch.nn.Dropout3d: nn.Dropout3d,
    torch.nn.AlphaDropout: nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout: nn.FeatureAlphaDropout,
}


def _swapped(module):
    """Our module in `module`'s state (p, inplace, training, hooks), or None when `module`
    is not exactly one of torch's dropout classes (a subclass may change forward: kept)."""
    ours = _SWAPS.get(type(module))
    if ours is None:
        return None
    new = ours.__new__(ours)
    new.__dict__.update(module.__dict__)
    if ours is nn.Dropout:
        new.scale_train = True
    return new


def convert(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every torch dropout module inside `module` (Dropout, Dropout1d/2d/3d,
    AlphaDropout, FeatureAlphaDropout) for this package's, in place, keeping `p`,
    `inplace`, the training flag, the module's hooks and its place in the tree (names,
    state_dict keys: dropout has no parameters or buffers). Returns `module`, or its
    replacement when `module` itself is a torch dropout module."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError("dropout_ext.convert: expected a torch.nn.Module, got %s" % type(module).__name__)
    root = _swapped(module)
    if root is not None:
        return root
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            new = _swapped(child) if child is not None else None
            if new is not None:
                parent._modules[name] = new
    return module
