"""GPT-2 for the GPU bench: Hugging Face's GPT2LMHeadModel (random init, eager attention)
when `transformers` is installed, else this file's own GPT-2 in plain torch.

The module layout and dropout placement follow Hugging Face's GPT2LMHeadModel with eager
attention: dropout on the embeddings (`drop`), on the attention probabilities (a
functional `torch.nn.functional.dropout` call, as transformers' eager_attention_forward
makes it), after the attention projection (`resid_dropout`) and after the MLP
(`mlp.dropout`), all nn.Dropout(0.1) except the functional one. Weights tied between
the token embedding and the LM head, GELU (tanh), pre-LayerNorm, random init.
"""
import math

import torch
import torch.nn as nn


class Config:
    def __init__(self, n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, pdrop=0.1):
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.vocab_size, self.n_positions = vocab_size, n_positions
        self.resid_pdrop = self.embd_pdrop = self.attn_pdrop = pdrop


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)
        causal = torch.tril(torch.ones(cfg.n_positions, cfg.n_positions, dtype=torch.bool))
        self.register_buffer("causal", causal.view(1, 1, cfg.n_positions, cfg.n_positions), persistent=False)

    def forward(self, h):
        B, T, C = h.shape
        q, k, v = self.c_attn(h).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        # eager attention, as transformers' eager_attention_forward computes it
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        att = torch.where(self.causal[:, :, :T, :T], att, torch.finfo(att.dtype).min)
        att = torch.softmax(att, dim=-1).to(v.dtype)
        # looked up at call time, so patching torch.nn.functional.dropout reaches it
        att = torch.nn.functional.dropout(att, p=self.attn_pdrop, training=self.training)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, h):
        return self.dropout(self.c_proj(torch.nn.functional.gelu(self.c_fc(h), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, h):
        h = h + self.attn(self.ln_1(h))
        return h + self.mlp(self.ln_2(h))


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, labels):
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        h = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            h = block(h)
        logits = self.lm_head(self.ln_f(h))
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def replace_dropouts(model, factory):
    """Every nn.Dropout module of model replaced by factory(p); returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, factory(child.p))
                count += 1
    return count


class HFAdapter(nn.Module):
    """transformers' GPT2LMHeadModel behind this file's forward(idx, labels) -> loss."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, idx, labels):
        return self.hf(input_ids=idx, labels=labels).loss


def make_model(cfg, prefer_hf=True):
    """(model, description): transformers' GPT-2 with eager attention (so the attention
    probabilities go through a real dropout call) if available, else GPT2(cfg)."""
    if prefer_hf:
        try:
            import transformers

            config = transformers.GPT2Config(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                                             vocab_size=cfg.vocab_size, n_positions=cfg.n_positions,
                                             resid_pdrop=cfg.resid_pdrop, embd_pdrop=cfg.embd_pdrop,
                                             attn_pdrop=cfg.attn_pdrop)
            config._attn_implementation = "eager"
            model = transformers.GPT2LMHeadModel(config)
            model.config._attn_implementation = "eager"
            return HFAdapter(model), "transformers %s GPT2LMHeadModel (eager attention)" % transformers.__version__
        except Exception as e:  # not installed, or an API change
            print("(transformers GPT-2 unavailable: %s; using bench/gpt2.py)" % (e,))
    return GPT2(cfg), "bench/gpt2.py GPT-2 (plain torch)"
