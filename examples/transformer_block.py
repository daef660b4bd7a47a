"""A pre-norm transformer block whose residual connections use the fused
dropout_ext.functional.bias_dropout_add: `x + dropout(proj(h) + bias)` in one pass.

Checks that the fused block gives bit-for-bit the output and gradients of the same block
written with separate ops (float32, same seeds), then trains two blocks for a few steps on
a toy sequence task made in the script. (Speed: see the fused rows of bench/bench_cpu.py.)

    python examples/transformer_block.py
"""
import torch

import dropout_ext.functional as DF


class Block(torch.nn.Module):
    def __init__(self, dim=128, heads=4, p=0.1, fused=True):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.proj_bias = torch.nn.Parameter(torch.zeros(dim))
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.fc2 = torch.nn.Linear(4 * dim, dim, bias=False)
        self.fc2_bias = torch.nn.Parameter(torch.zeros(dim))
        self.heads, self.p, self.fused = heads, p, fused
        self.step = 0  # seeds per call: reproducible masks that differ between calls

    def residual(self, h, bias, x, seed):
        if self.fused:
            return DF.bias_dropout_add(h, bias, x, self.p, self.training, seed=seed)
        return x + DF.dropout(h + bias, self.p, self.training, seed=seed)

    def forward(self, x):
        b, t, d = x.shape
        self.step += 1
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             is_causal=True)
        x = self.residual(self.proj(a.transpose(1, 2).reshape(b, t, d)), self.proj_bias, x, 2 * self.step)
        h = self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))
        return self.residual(h, self.fc2_bias, x, 2 * self.step + 1)


def main():
    torch.manual_seed(0)
    fused, plain = Block(fused=True), Block(fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(8, 64, 128, requires_grad=True)
    out_f, out_p = fused(x), plain(x)
    gf = torch.autograd.grad(out_f.sum(), [x] + list(fused.parameters()))
    gp = torch.autograd.grad(out_p.sum(), [x] + list(plain.parameters()))
    assert torch.equal(out_f, out_p), "fused and unfused outputs differ"
    assert all(torch.equal(a, b) for a, b in zip(gf, gp)), "gradients differ"
    print("fused == unfused: outputs and all gradients bit-identical")

    # toy task: predict the running mean of the input sequence
    model = torch.nn.Sequential(Block(), Block())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(60):
        xs = torch.randn(16, 32, 128)
        target = xs.cumsum(1) / torch.arange(1, 33).view(1, -1, 1)
        loss = torch.nn.functional.mse_loss(model(xs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == 59:
            print("step %2d  loss %.4f" % (step, loss.item()))


if __name__ == "__main__":
    main()
