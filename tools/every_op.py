"""One call of every op, forward and backward, at a size `n` and dtype, with odd sizes,
offsets, strides, shards and every operand: what the memory checkers run
(tools/asan_check.sh on the CPU paths, tools/cuda_memcheck.py under compute-sanitizer on a
GPU). It checks nothing itself: the checker reports any bad access."""
import torch

from dropout_ext import functional as F


def every_op(n, dtype, device="cpu", tile=True):
    """Every op once on tensors of about n elements (n = 0 included). tile=False leaves out
    the permuted 4-D input that takes the tile kernel (the emulator runs it slowly)."""
    def randn(*shape, grad=False):
        return torch.randn(*shape, dtype=dtype, device=device, requires_grad=grad)

    x = randn(n, grad=True)
    F.dropout(x, 0.3, seed=n).sum().backward()
    y = randn(n, 3)
    F.dropout(y.t(), 0.5, inplace=True, seed=1)
    F.dropout1d(y.view(n, 3, 1), 0.5)
    if n:
        b, r = randn(3, grad=True), randn(n, 3, grad=True)
        F.bias_dropout_add(y.requires_grad_(), b, r, 0.2).sum().backward()
        F.dropout_add(y.detach(), r.detach(), 0.2)
        F.dropout_add(y.detach(), r.detach().t().contiguous().t(), 0.2, seed=3)  # a residual in its own layout
        F.bias_dropout_add(y.detach(), randn(6)[::2], r.detach(), 0.2)  # a stepped bias
        F.drop_path(y.detach(), 0.5)
        z = randn(2, n, 5, 3, grad=True)
        if tile:
            F.dropout(z.permute(3, 1, 0, 2), 0.4).sum().backward()  # tile mode
        F.dropout(z[:, ::2], 0.4, global_shape=(4, n, 5, 3), global_offset=(1, 0, 0, 0))
        F.dropout(z.detach()[:, :, 1:], 0.4, global_shape=(2, n, 9, 5), global_offset=(0, 0, 2, 2))
        F.alpha_dropout(z, 0.3, True).sum().backward()
        F.feature_alpha_dropout(z.detach().to(memory_format=torch.channels_last), 0.3, True)
        F.dropout2d(z.detach().to(memory_format=torch.channels_last), 0.3)
    F.dropout(randn(n), 1.0)
    # the fused norms: rows of n (odd, past the vector width), every operand, backward
    for hidden, rows in ((n, 3), (max(n, 1), 1)) if n else ():
        xs = [randn(rows, hidden, grad=True) for _ in range(2)]
        w, b, ib = (randn(hidden, grad=True) for _ in range(3))
        out, hs = F.dropout_add_layer_norm(xs[0], xs[1], w, b, 0.3, input_bias=ib, prenorm=True)
        (out.sum() + hs.sum()).backward()
        F.dropout_add_rms_norm(xs[0], xs[1].detach().t().contiguous().t(), w, 0.3,
                               residual_in_fp32=True).sum().backward()
        F.dropout_add_layer_norm(xs[0][:, None].expand(rows, 2, hidden), None, None, None, 0.3,
                                 global_shape=(rows + 2, 2, hidden), global_offset=(1, 0, 0))


def chunked(device="cpu"):
    """Tensors large enough to be split into several chunks (CPU: between threads; CUDA:
    several blocks), at offsets that are not chunk-aligned."""
    x = torch.randn(97, 1031, device=device, requires_grad=True)
    F.dropout(x, 0.3).sum().backward()
    F.bias_dropout_add(x, torch.randn(1031, device=device), torch.randn(97, 1031, device=device), 0.3).sum().backward()
    F.dropout(x.detach().t(), 0.3, global_shape=(1031, 200), global_offset=(0, 3))
    F.dropout_add_layer_norm(x, torch.randn(97, 1031, device=device), torch.randn(1031, device=device), None,
                             0.3).sum().backward()
