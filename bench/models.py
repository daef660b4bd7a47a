"""Training steps of real Hugging Face models: torch's dropout, dropout_ext.convert, and
dropout_ext.integrations.transformers.apply (random init, eager attention). Without
`transformers` (a GPU machine with no network): GPT-2 written out in plain torch below
(Hugging Face's GPT2LMHeadModel layout and dropout placement), torch against convert.

  python bench/models.py                   CPU, float32: BERT-base sequence classification and
                                           GPT-2 small LM head, batch 8 x 128
  python bench/models.py --device cuda     GPU, bfloat16 weights: BERT-base 32 x 512, GPT-2 8 x 1024
  python bench/models.py --tiny --steps 2  seconds: 2-layer models (a smoke test, not a measurement)
  --models bert,gpt2  --steps N  --batch B --seq S  --variants torch,convert,apply,apply-unfused  --out DIR

A step is forward, backward and an SGD update (no optimizer state: every variant's memory
is the model's). The variants are deep copies of one model, timed in interleaved rounds in
a rotating order (bench/timing.py); "step ms" is the median, "vs torch" the median over
rounds of torch's time / the variant's in the same round. "apply-unfused" is
apply(model, fuse=False): apply without the fused dropout + add + LayerNorm blocks.

Memory. "peak MiB": the most memory allocated above what was allocated when the step
began (activations, gradients, temporaries). On the GPU from torch.cuda.max_memory_allocated
over the timed steps; on the CPU from torch.profiler's allocation events of torch's CPU
allocator (profile_memory=True, one extra step per variant: the running sum of its
allocations and frees). "saved MiB": the bytes autograd saves for backward in one forward
(each storage once; the weights the forward saves included, so it can exceed "peak MiB").
Prints a markdown table; writes models.json (bench/results/ unless --out).
"""
import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tables import SavedBytes  # noqa: E402
from timing import cpu_model, interleaved_samples, loadavg, paired_ratio, progress, quiet_torch_logs  # noqa: E402

import dropout_ext  # noqa: E402
from dropout_ext.integrations import transformers as hf  # noqa: E402

VARIANTS = ("torch", "convert", "apply", "apply-unfused")
# model -> (CPU batch, seq), (GPU batch, seq)
SHAPES = {"bert": ((8, 128), (32, 512)), "gpt2": ((8, 128), (8, 1024))}


class PlainGPT2(torch.nn.Module):
    """GPT-2 in plain torch, laid out as Hugging Face's GPT2LMHeadModel with eager attention:
    dropout on the embeddings, on the attention probabilities (a functional call), after the
    attention projection and after the MLP, all p=0.1; pre-LayerNorm, GELU (tanh), the LM
    head tied to the token embedding. forward(input_ids, labels) -> an object with .loss."""

    def __init__(self, n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, p=0.1):
        super().__init__()
        nn = torch.nn
        self.n_head, self.p = n_head, p
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(n_positions, n_embd)
        self.drop = nn.Dropout(p)
        self.h = nn.ModuleList(nn.ModuleDict(dict(
            ln_1=nn.LayerNorm(n_embd), c_attn=nn.Linear(n_embd, 3 * n_embd), c_proj=nn.Linear(n_embd, n_embd),
            resid_dropout=nn.Dropout(p), ln_2=nn.LayerNorm(n_embd), c_fc=nn.Linear(n_embd, 4 * n_embd),
            mlp_proj=nn.Linear(4 * n_embd, n_embd), mlp_dropout=nn.Dropout(p))) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def attention(self, b, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in b.c_attn(x).split(C, 2))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(C // self.n_head)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = torch.softmax(torch.where(causal, att, torch.finfo(att.dtype).min), dim=-1).to(v.dtype)
        att = torch.nn.functional.dropout(att, self.p, self.training)  # looked up at call time, as transformers'
        return b.resid_dropout(b.c_proj(torch.matmul(att, v).transpose(1, 2).reshape(B, T, C)))

    def forward(self, input_ids, labels):
        h = self.drop(self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1], device=input_ids.device)))
        for b in self.h:
            h = h + self.attention(b, b.ln_1(h))
            h = h + b.mlp_dropout(b.mlp_proj(torch.nn.functional.gelu(b.c_fc(b.ln_2(h)), approximate="tanh")))
        logits = self.lm_head(self.ln_f(h))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return types.SimpleNamespace(loss=loss)


def has_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def build(name, tiny):
    """(model, description, vocab size), random init, eager attention, default dropout."""
    if not has_transformers():
        if name != "gpt2":
            raise SystemExit("bench/models.py: %s needs transformers (without it: --models gpt2)" % name)
        kw = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000) if tiny else {}
        return PlainGPT2(**kw), "GPT-2 in plain torch", kw.get("vocab_size", 50257)
    import transformers

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)
    if name == "bert":
        cfg = transformers.BertConfig(attn_implementation="eager", **(small if tiny else {}))
        return transformers.BertForSequenceClassification(cfg), "BertForSequenceClassification", cfg.vocab_size
    if name == "gpt2":
        kw = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0) if tiny else {}
        cfg = transformers.GPT2Config(attn_implementation="eager", **kw)
        return transformers.GPT2LMHeadModel(cfg), "GPT2LMHeadModel", cfg.vocab_size
    raise SystemExit("bench/models.py: unknown model %r (bert, gpt2)" % name)


def variant(base, name):
    model = copy.deepcopy(base)
    if name == "convert":
        return dropout_ext.convert(model)
    if name == "apply":
        return hf.apply(model)
    if name == "apply-unfused":
        return hf.apply(model, fuse=False)
    return model


def trainer(model, batch):
    """A training step of model on batch (forward, backward, SGD), and its losses list."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    model.train()
    losses = []

    def step():
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return step, losses


def cpu_peak_bytes(step):
    """Peak of the running sum of the CPU allocator's allocations (+) and frees (-) that
    torch.profiler records during one call of step, above the start."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.typed[1].device.type == "cpu":
            events.append((e.start_time_ns, e.typed[1].alloc_size))
        stack.extend(e.children)
    cur = peak = 0
    for _, size in sorted(events):
        cur += size
        peak = max(peak, cur)
    return peak


def bench_model(name, args, cuda, device, dtype):
    shape = SHAPES[name][1 if cuda else 0]
    batch_size, seq = args.batch or shape[0], args.seq or shape[1]
    if args.tiny:
        batch_size, seq = args.batch or 2, args.seq or 32
    progress("%s: building" % name)
    torch.manual_seed(0)
    base, desc, vocab = build(name, args.tiny)
    base = base.to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch_size, seq), generator=g).to(device)
    batch = {"input_ids": ids, "labels": ids if name == "gpt2" else torch.randint(0, 2, (batch_size,), generator=g)
             .to(device)}
    models = {v: variant(base, v) for v in args.variants}
    del base
    fused = {v: sum(isinstance(m, hf.DropoutAddLayerNormOutput) for m in model.modules())
             for v, model in models.items()}
    steps, losses = {}, {}
    for v, model in models.items():
        steps[v], losses[v] = trainer(model, batch)
    sync = torch.cuda.synchronize if cuda else None
    peaks = dict.fromkeys(models, 0)

    def timer(v, fn, k):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        if cuda:
            torch.cuda.synchronize()
            peaks[v] = max(peaks[v], torch.cuda.max_memory_allocated() - start)
        return (time.perf_counter() - t0) / k

    progress("%s: %d rounds of %s" % (name, args.steps, ", ".join(models)))
    samples = interleaved_samples(steps, args.steps, warmup=1, sync=sync, timer=timer)
    saved = {}
    for v, model in models.items():
        if not cuda:
            progress("%s: memory of one %s step" % (name, v))
            peaks[v] = cpu_peak_bytes(steps[v])
        saved[v] = SavedBytes.of(lambda: model(**batch).loss)
    rows = []
    for v in models:
        med = statistics.median(samples[v])
        rows.append({"model": "%s %s" % (name, desc), "batch x seq": "%dx%d" % (batch_size, seq), "variant": v,
                     "step ms": round(med * 1e3, 1),
                     "vs torch": round(paired_ratio(samples, "torch", v), 3) if "torch" in samples else None,
                     "peak MiB": round(peaks[v] / 2**20, 1), "saved MiB": round(saved[v] / 2**20, 1),
                     "fused blocks": fused[v], "step seconds": samples[v],
                     "losses": [round(float(x), 4) for x in losses[v]]})
    models.clear()
    if cuda:
        torch.cuda.empty_cache()
    return rows


COLUMNS = ("model", "batch x seq", "variant", "step ms", "vs torch", "peak MiB", "saved MiB", "fused blocks")


def markdown(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    hf_ok = has_transformers()
    ap.add_argument("--models", default="bert,gpt2" if hf_ok else "gpt2", help="comma-separated: bert, gpt2")
    ap.add_argument("--variants", default="torch,convert,apply" if hf_ok else "torch,convert",
                    help="comma-separated of %s (apply needs transformers)" % ", ".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=None, help="timed rounds (default: 5 on the CPU, 20 on the GPU)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="2-layer models: a smoke test, not a measurement")
    ap.add_argument("--out", default=None, help="folder for models.json (default bench/results)")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or (not hf_ok and any(v.startswith("apply") for v in args.variants)):
        ap.error("unknown variants %s (of %s)" % (unknown, ", ".join(VARIANTS)) if unknown else
                 "apply needs transformers, which is not installed")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    args.steps = args.steps or (20 if cuda else 5)
    dtype = torch.bfloat16 if cuda else torch.float32
    quiet_torch_logs()
    version = __import__("transformers").__version__ if hf_ok else "not installed"
    info = {"device": torch.cuda.get_device_name() if cuda else "cpu", "cpu": cpu_model(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": version,
            "dropout_ext": dropout_ext.__version__, "backends": list(dropout_ext.compiled_backends()),
            "dtype": str(dtype).replace("torch.", ""), "steps": args.steps, "tiny": args.tiny,
            "loadavg_start": loadavg(),
            "memory": "torch.cuda.max_memory_allocated above the step's start" if cuda else
            "torch.profiler allocation events (CPU allocator) of one step, peak above its start"}
    t0 = time.time()
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows += bench_model(name, args, cuda, args.device, dtype)
    info.update(loadavg_end=loadavg(), seconds=round(time.time() - t0, 1))
    head = ("Training step (forward, backward, SGD), %s %s, eager attention, median of %d interleaved rounds; "
            "machine: %s, %d cores (%d threads), torch %s, transformers %s, dropout_ext %s (compiled: %s), "
            "load average %s -> %s" % (info["dtype"], "on " + info["device"] if cuda else "on the CPU", args.steps,
                                       info["cpu"], info["cores"], info["threads"], info["torch"],
                                       info["transformers"], info["dropout_ext"], ", ".join(info["backends"]) or "none",
                                       info["loadavg_start"], info["loadavg_end"]))
    if args.tiny:
        head += " (tiny models: a smoke test, not a measurement)"
    print(head + "\n\n" + markdown(rows) + "\n\npeak MiB: " + info["memory"] + "; saved MiB: autograd's saved "
          "tensors of one forward", flush=True)
    out = args.out or os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "models.json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
