"""dropout_ext.integrations.transformers.apply on small random-init Hugging Face models
(BERT, RoBERTa, GPT-2, ViT; eager attention): evaluation outputs kept, no torch dropout
left in a training step, fuse=True and fuse=False drawing the same masks, state_dict
kept, torch.compile, and the errors."""
import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

transformers = pytest.importorskip("transformers")

import dropout_ext  # noqa: E402
from dropout_ext.integrations import transformers as hf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, SEQ, BATCH = 64, 12, 2
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3, attn_implementation="eager")


def _bert(**kw):
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, max_position_embeddings=32, **dict(TINY, **kw)))


def _roberta(**kw):
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=VOCAB, max_position_embeddings=SEQ + 4, **dict(TINY, **kw)))


def _gpt2(**kw):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.2, embd_pdrop=0.2,
        attn_pdrop=0.3, bos_token_id=0, eos_token_id=0, **dict(dict(attn_implementation="eager"), **kw)))


def _vit(**kw):
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_labels=3, **dict(TINY, **kw)))


MODELS = {"bert": _bert, "roberta": _roberta, "gpt2": _gpt2, "vit": _vit}
FUSED = {"bert": 4, "roberta": 4, "gpt2": 0, "vit": 0}  # 2 layers x (SelfOutput, Output)


def _batch(name):
    """The model's keyword inputs, labels included (a padded row where there is a mask)."""
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return {"pixel_values": torch.randn(BATCH, 3, 16, 16, generator=g), "labels": torch.tensor([0, 2])}
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - 4:] = 0
    labels = ids if name == "gpt2" else torch.tensor([0, 1])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pair(name, **kw):
    torch.manual_seed(0)
    model = MODELS[name](**kw)
    return model, copy.deepcopy(model)


def _fused(model):
    return [m for m in model.modules() if isinstance(m, hf.DropoutAddLayerNormOutput)]


class OpCounter(TorchDispatchMode):
    """The ops a region dispatches, by name (what runs, whatever Python function called it)."""

    def __init__(self):
        super().__init__()
        self.ops = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def torch_dropout(self):
        return {k: v for k, v in self.ops.items() if k.startswith("aten.") and ("dropout" in k or "bernoulli" in k)}

    def ours(self):
        return {k: v for k, v in self.ops.items() if k.startswith("dropout_ext.")}


def _step(model, batch):
    """A training forward and backward: (loss, {parameter name: grad})."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {k.removeprefix("_orig_mod."): p.grad for k, p in model.named_parameters()
                           if p.grad is not None}


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_outputs_are_the_original_models(name):
    model, reference = _pair(name)
    assert hf.apply(model) is model
    assert len(_fused(model)) == FUSED[name]
    assert model.config._attn_implementation == hf.ATTENTION
    batch = _batch(name)
    with torch.no_grad():
        got, want = model.eval()(**batch).logits, reference.eval()(**batch).logits
    if FUSED[name]:  # the fused norm rounds on its own
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("name,kw", [("bert", {}), ("roberta", {}), ("gpt2", {}), ("vit", {}),
                                     ("gpt2", {"reorder_and_upcast_attn": True})], ids=str)
def test_no_torch_dropout_runs_in_a_training_step(name, kw):
    model, reference = _pair(name, **kw)
    hf.apply(model)
    batch = _batch(name)
    with OpCounter() as before:
        _step(reference, batch)
    assert before.torch_dropout(), "the counter sees torch's dropout in the original model"
    with OpCounter() as after:
        loss, _ = _step(model, batch)
    assert after.torch_dropout() == {}
    ours = after.ours()
    assert ours.get("dropout_ext.dropout_add_norm", 0) == FUSED[name], ours
    # unfused dropout modules and the attention dropouts (one per layer) run ours
    assert ours.get("dropout_ext.dropout", 0) >= 2, ours
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_fused_and_unfused_draw_the_same_masks(name):
    fused, unfused = _pair(name)
    hf.apply(fused)
    hf.apply(unfused, fuse=False)
    assert len(_fused(fused)) == 4 and _fused(unfused) == []
    batch = _batch(name)
    for seed in (3, 4):
        torch.manual_seed(seed)
        loss_f, grads_f = _step(fused, batch)
        torch.manual_seed(seed)
        loss_u, grads_u = _step(unfused, batch)
        torch.testing.assert_close(loss_f, loss_u, rtol=1e-5, atol=1e-6)
        assert grads_f.keys() == grads_u.keys() and len(grads_f) == len(list(fused.parameters()))
        for k in grads_f:
            torch.testing.assert_close(grads_f[k], grads_u[k], rtol=1e-4, atol=1e-6, msg=k)
    with torch.no_grad():  # not vacuous: training draws masks
        assert not torch.allclose(fused.eval()(**batch).loss, loss_f)


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_round_trips(name):
    model, reference = _pair(name)
    keys = list(model.state_dict())
    hf.apply(model)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    fresh = MODELS[name]()
    fresh.load_state_dict(model.state_dict())  # strict
    back = hf.apply(MODELS[name]())
    back.load_state_dict(fresh.state_dict())
    batch = _batch(name)
    with torch.no_grad():
        want = fresh.eval()(**batch).logits
        torch.testing.assert_close(model.eval()(**batch).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back.eval()(**batch).logits, want, rtol=1e-5, atol=1e-5)


def test_fused_block_keeps_its_submodules_and_hooks():
    model, _ = _pair("bert")
    block = model.bert.encoder.layer[0].output
    dense, norm = block.dense, block.LayerNorm
    calls = []
    block.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    hf.apply(model)
    new = model.bert.encoder.layer[0].output
    assert isinstance(new, hf.DropoutAddLayerNormOutput) and new.replaced == "BertOutput"
    assert new.dense is dense and new.LayerNorm is norm and type(new.dropout) is dropout_ext.nn.Dropout
    model(**_batch("bert"))
    assert calls == ["DropoutAddLayerNormOutput"]
    again = copy.deepcopy(model)
    assert hf.apply(again) is again and len(_fused(again)) == 4  # applying twice changes nothing
    assert again.config._attn_implementation == hf.ATTENTION


def test_torch_compile_runs_the_applied_model():
    model, _ = _pair("bert")
    hf.apply(model)
    batch = _batch("bert")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # no graph break
    torch.manual_seed(5)
    loss_c, grads_c = _step(compiled, batch)
    torch.manual_seed(5)
    loss_e, grads_e = _step(model, batch)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-4, atol=1e-6, msg=k)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------- errors


def test_unsupported_models_raise_naming_the_class():
    with pytest.raises(TypeError, match=r"got Linear.*bert, roberta, gpt2, vit"):
        hf.apply(torch.nn.Linear(2, 2))
    other = transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=1, n_heads=4, hidden_dim=48))
    with pytest.raises(TypeError, match=r"DistilBertModel .*not supported.*bert, roberta, gpt2, vit"):
        hf.apply(other)
    assert type(other.embeddings.dropout) is torch.nn.Dropout  # refused before any change
    with pytest.raises(TypeError, match="fuse must be a bool"):
        hf.apply(_bert(), fuse="yes")


def test_unsupported_library_versions_raise(monkeypatch):
    model = _bert()
    # the module `import transformers` gives now (transformers may replace its lazy module)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.46.0")
    with pytest.raises(ValueError, match=r"transformers >= 5\.0, found 4\.46\.0"):
        hf.apply(model)
    monkeypatch.undo()

    def changed(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) * 2 + input_tensor)

    from transformers.models.bert import modeling_bert
    monkeypatch.setattr(modeling_bert.BertOutput, "forward", changed)
    model = _bert()
    with pytest.raises(ValueError, match=r"BertOutput.forward .*fuse=False"):
        hf.apply(model)
    assert type(model.bert.embeddings.dropout) is torch.nn.Dropout and model.config._attn_implementation == "eager"
    hf.apply(model, fuse=False)
    assert _fused(model) == [] and model.config._attn_implementation == hf.ATTENTION


def test_other_attention_kernels_warn_and_keep_their_attention():
    torch.manual_seed(0)
    model = _bert(attn_implementation="sdpa")
    with pytest.warns(UserWarning, match="sdpa drops the attention probabilities inside its own kernel"):
        hf.apply(model)
    assert model.config._attn_implementation == "sdpa" and len(_fused(model)) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf.apply(_vit(attn_implementation="sdpa", attention_probs_dropout_prob=0.0))  # nothing to drop there


def test_the_package_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import dropout_ext, dropout_ext.integrations.transformers as hf, torch\n"
            "try:\n    hf.apply(torch.nn.Linear(2, 2))\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ImportError: dropout_ext.integrations.transformers needs the transformers package" in proc.stdout


def test_model_bench_smoke(tmp_path):
    """bench/models.py on tiny models: its table and its JSON."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "models.py"), "--tiny", "--steps", "1",
                           "--models", "bert", "--variants", "torch,apply", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| bert BertForSequenceClassification | 2x32 | apply |" in proc.stdout, proc.stdout
    rows = json.loads((tmp_path / "models.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["torch", "apply"] and rows[1]["fused blocks"] == 4
