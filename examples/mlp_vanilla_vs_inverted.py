"""Inverted vs vanilla dropout on the same task: both reach the same test accuracy.

A multilayer perceptron is trained twice on a synthetic classification problem made in
this script (no downloads): once with inverted dropout (scale 1/(1-p) in training, the
identity at test time: dropout_ext.nn.Dropout(p)), once with the original "vanilla"
dropout of Srivastava et al. (no scaling in training, activations times (1-p) at test
time: dropout_ext.nn.Dropout(p, scale_train=False)). Same data, same initial weights.

    python examples/mlp_vanilla_vs_inverted.py
"""
import torch

import dropout_ext


def make_data(n, dim=20, classes=4, seed=0):
    """Points labelled by a fixed random two-layer teacher network (the same for every
    split), plus 5% label noise; `seed` picks the points."""
    teacher = torch.Generator().manual_seed(1234)
    w1 = torch.randn(dim, 64, generator=teacher)
    w2 = torch.randn(64, classes, generator=teacher)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    flip = torch.rand(n, generator=g) < 0.05
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    return x, y


def mlp(scale_train, p=0.5, dim=20, hidden=256, classes=4):
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.ReLU(), dropout_ext.nn.Dropout(p, scale_train=scale_train),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), dropout_ext.nn.Dropout(p, scale_train=scale_train),
        torch.nn.Linear(hidden, classes),
    )


def train(model, x, y, xt, yt, epochs=60, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).float().mean().item()


def main():
    x, y = make_data(6000)
    xt, yt = make_data(3000, seed=1)
    results = {}
    for name, scale_train in (("inverted (scale_train=True)", True), ("vanilla (scale_train=False)", False)):
        torch.manual_seed(0)  # same initial weights and the same dropout masks for both
        model = mlp(scale_train)
        results[name] = train(model, x, y, xt, yt)
        print("%-28s test accuracy %.3f" % (name, results[name]))
    a, b = results.values()
    print("difference: %.3f" % abs(a - b))
    return results


if __name__ == "__main__":
    main()
