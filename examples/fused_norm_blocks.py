"""Transformer blocks whose residual add and norm use the fused
dropout_ext.functional.dropout_add_layer_norm: the post-norm block of BERT,
`LayerNorm(x + dropout(dense(h)))`, and the pre-norm block of GPT-2 / ViT, where
`h = x + dropout(proj(a))` is both the residual stream and the input of the next norm
(prenorm=True returns both).

For each, the fused block and the same block written with separate ops (dropout_add, then
torch's layer_norm) draw the same masks for the same seed, so their losses and gradients
agree to the norm's rounding. Then a few training steps of each fused block on a toy task.

    python examples/fused_norm_blocks.py
"""
import torch

import dropout_ext.functional as DF

TF = torch.nn.functional


class PostNormBlock(torch.nn.Module):
    """BERT's layer: attention, then LayerNorm(x + dropout(dense(attn))); the MLP likewise."""

    def __init__(self, dim=128, heads=4, p=0.1, fused=True):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dense = torch.nn.Linear(dim, dim)
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)
        self.p, self.fused = p, fused

    def add_norm(self, y, x, ln, seed):
        if self.fused:
            return DF.dropout_add_layer_norm(y, x, ln.weight, ln.bias, self.p, self.training, eps=ln.eps, seed=seed)
        return TF.layer_norm(DF.dropout_add(y, x, self.p, self.training, seed=seed), ln.normalized_shape, ln.weight,
                             ln.bias, ln.eps)

    def forward(self, x, seed):
        a, _ = self.attn(x, x, x, need_weights=False)
        x = self.add_norm(self.dense(a), x, self.ln1, seed)
        return self.add_norm(self.fc2(TF.gelu(self.fc1(x))), x, self.ln2, seed + 1)


class PreNormBlock(torch.nn.Module):
    """GPT-2's block: h = x + dropout(proj(attn(ln1(x)))); out = h + dropout(mlp(ln2(h))).
    The fused op returns ln2(h) and h from one pass; the block's last residual add has no
    norm after it inside the block (the next block's ln1 is that norm), so it is a
    dropout_add."""

    def __init__(self, dim=128, heads=4, p=0.1, fused=True):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj = torch.nn.Linear(dim, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)
        self.p, self.fused = p, fused

    def forward(self, x, seed):
        y = self.ln1(x)
        a, _ = self.attn(y, y, y, need_weights=False)
        ln2 = self.ln2
        if self.fused:
            normed, h = DF.dropout_add_layer_norm(self.proj(a), x, ln2.weight, ln2.bias, self.p, self.training,
                                                  eps=ln2.eps, prenorm=True, seed=seed)
        else:
            h = DF.dropout_add(self.proj(a), x, self.p, self.training, seed=seed)
            normed = TF.layer_norm(h, ln2.normalized_shape, ln2.weight, ln2.bias, ln2.eps)
        return DF.dropout_add(self.fc2(TF.gelu(self.fc1(normed))), h, self.p, self.training, seed=seed + 1)


def compare(cls):
    torch.manual_seed(0)
    fused, plain = cls(fused=True), cls(fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(4, 32, 128)
    target = torch.randn(4, 32, 128)
    losses, grads = [], []
    for block in (fused, plain):
        loss = TF.mse_loss(block(x, seed=7), target)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(block.parameters())))
    assert torch.allclose(losses[0], losses[1], rtol=1e-6, atol=1e-7), losses
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    print("%s: fused loss %.6f, unfused %.6f, gradients agree to rounding"
          % (cls.__name__, losses[0].item(), losses[1].item()))


def train(cls):
    torch.manual_seed(1)
    model = torch.nn.ModuleList([cls(), cls()])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(40):
        xs = torch.randn(16, 32, 128)
        target = xs.cumsum(1) / torch.arange(1, 33).view(1, -1, 1)
        out = xs
        for i, block in enumerate(model):
            out = block(out, seed=1000 * step + 10 * i)
        loss = TF.mse_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == 39:
            print("  %s step %2d  loss %.4f" % (cls.__name__, step, loss.item()))


def main():
    for cls in (PostNormBlock, PreNormBlock):
        compare(cls)
    for cls in (PostNormBlock, PreNormBlock):
        train(cls)


if __name__ == "__main__":
    main()
