"""Using the package in a model built with torch's modules: dropout_ext.convert."""
import pytest
import torch

import dropout_ext
from dropout_ext import functional as F
from dropout_ext import nn


class Custom(torch.nn.Dropout):
    """A user's subclass: its forward may differ, so convert keeps it."""

    def forward(self, x):
        return x


def _model():
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.3, inplace=True), torch.nn.ReLU())
    return torch.nn.ModuleDict({
        "block": inner,
        "d1": torch.nn.Dropout1d(0.2),
        "d2": torch.nn.Dropout2d(0.4),
        "d3": torch.nn.Dropout3d(0.5),
        "alpha": torch.nn.AlphaDropout(0.1),
        "falpha": torch.nn.FeatureAlphaDropout(0.6),
        "custom": Custom(0.7),
        "head": torch.nn.Linear(8, 2),
    })


def test_convert_swaps_every_torch_dropout_and_keeps_the_tree():
    model = _model()
    model["d2"].eval()
    calls = []
    model["block"].register_forward_hook(lambda m, i, o: calls.append("parent"))
    model["block"][1].register_forward_hook(lambda m, i, o: calls.append("dropout"))
    keys = list(model.state_dict())
    names = [n for n, _ in model.named_modules()]
    assert dropout_ext.convert(model) is model
    assert list(model.state_dict()) == keys
    assert [n for n, _ in model.named_modules()] == names
    expected = {"block.1": nn.Dropout, "d1": nn.Dropout1d, "d2": nn.Dropout2d, "d3": nn.Dropout3d,
                "alpha": nn.AlphaDropout, "falpha": nn.FeatureAlphaDropout}
    for name, cls in expected.items():
        assert type(model.get_submodule(name)) is cls, name
    assert type(model["custom"]) is Custom
    assert model["block"][1].p == 0.3 and model["block"][1].inplace and model["block"][1].scale_train
    assert model["d3"].p == 0.5 and not model["d3"].inplace
    assert not model["d2"].training and model["d1"].training
    model["block"](torch.randn(4, 8))
    assert calls == ["dropout", "parent"]
    assert dropout_ext.convert(model) is model  # converting twice changes nothing
    assert type(model["block"][1]) is nn.Dropout


def test_converted_model_draws_this_package_masks_and_keeps_eval_outputs():
    model, reference = _model(), _model()
    dropout_ext.convert(model)
    x = torch.randn(5, 8)
    model.eval(), reference.eval()
    assert torch.equal(model["block"](x), reference["block"](x))
    model.train()
    h = torch.relu(model["block"][0](x))
    torch.manual_seed(11)
    out = model["block"](x)
    torch.manual_seed(11)
    assert torch.equal(out, torch.relu(F.dropout(model["block"][0](x), 0.3)))
    assert not torch.equal(out, h)


def test_convert_of_a_dropout_module_returns_the_replacement():
    new = dropout_ext.convert(torch.nn.Dropout(0.25))
    assert type(new) is nn.Dropout and new.p == 0.25
    with pytest.raises(TypeError, match="torch.nn.Module"):
        dropout_ext.convert(object())
