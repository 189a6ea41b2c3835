"""memr2's engine against PyTorch on the same CPU, the same model shapes and the same work.

Runs the policy benchmark (`cargo bench -p memr2-policy --bench policy`, flex backend) and the
same workloads in PyTorch, alternating, several rounds, and prints the median tokens/s of each
side and their ratio. The PyTorch model is the same Llama/Qwen2 decoder written plainly (GQA,
rotate-half RoPE, RMSNorm, SwiGLU, tied embeddings), trained with AdamW on the same batch
shapes and decoding greedily with a KV cache, with PyTorch's fused scaled-dot-product
attention: what a PyTorch user gets without tuning.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python crates/memr2-policy/scripts/engine_vs_pytorch.py --rounds 3
    /tmp/torchenv/bin/python crates/memr2-policy/scripts/engine_vs_pytorch.py --parts train --rounds 5
    /tmp/torchenv/bin/python crates/memr2-policy/scripts/engine_vs_pytorch.py --shapes --models default

Not run by CI. Both sides use 2 threads unless --threads says otherwise.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# The policy benchmark's models (its `Workload`s): width, layers, query and key/value heads,
# SwiGLU width, vocabulary, training batch and sequence length.
MODELS = {
    "tiny": dict(hidden=256, layers=4, heads=4, kv=2, ffn=704, vocab=2048, batch=8, seq=256),
    "default": dict(hidden=128, layers=4, heads=4, kv=4, ffn=336, vocab=1024, batch=16, seq=384),
}
GEN_PROMPT, GEN_TOKENS = 16, 240


class Block(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        hd = m["hidden"] // m["heads"]
        self.heads, self.kv, self.hd = m["heads"], m["kv"], hd
        self.q = torch.nn.Linear(m["hidden"], m["heads"] * hd, bias=False)
        self.k = torch.nn.Linear(m["hidden"], m["kv"] * hd, bias=False)
        self.v = torch.nn.Linear(m["hidden"], m["kv"] * hd, bias=False)
        self.o = torch.nn.Linear(m["heads"] * hd, m["hidden"], bias=False)
        self.gate = torch.nn.Linear(m["hidden"], m["ffn"], bias=False)
        self.up = torch.nn.Linear(m["hidden"], m["ffn"], bias=False)
        self.down = torch.nn.Linear(m["ffn"], m["hidden"], bias=False)
        self.n1 = torch.nn.RMSNorm(m["hidden"], eps=1e-6)
        self.n2 = torch.nn.RMSNorm(m["hidden"], eps=1e-6)

    def forward(self, x, cos, sin, cache=None):
        b, s, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(b, s, self.heads, self.hd).transpose(1, 2)
        k = self.k(h).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v(h).view(b, s, self.kv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            if cache[0] is not None:
                k = torch.cat([cache[0], k], 2)
                v = torch.cat([cache[1], v], 2)
            cache[0], cache[1] = k, v
        rep = self.heads // self.kv
        k = k.repeat_interleave(rep, 1)
        v = v.repeat_interleave(rep, 1)
        causal = cache is None or s > 1
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Model(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.embed = torch.nn.Embedding(m["vocab"], m["hidden"])
        self.blocks = torch.nn.ModuleList(Block(m) for _ in range(m["layers"]))
        self.norm = torch.nn.RMSNorm(m["hidden"], eps=1e-6)
        hd = m["hidden"] // m["heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(2048).float(), inv)
        angles = torch.cat([angles, angles], -1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens, start=0, caches=None):
        s = tokens.shape[1]
        cos, sin = self.cos[start : start + s], self.sin[start : start + s]
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i])
        return self.norm(x) @ self.embed.weight.T


def torch_train(m, steps=3):
    torch.manual_seed(0)
    model = Model(m)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, m["vocab"], (m["batch"], m["seq"]))

    def step():
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, m["vocab"]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * m["batch"] * m["seq"] / (time.perf_counter() - start)


@torch.no_grad()
def torch_decode(m, batch):
    torch.manual_seed(0)
    model = Model(m).eval()
    prompt = torch.randint(0, m["vocab"], (batch, GEN_PROMPT))
    start = time.perf_counter()
    caches = [[None, None] for _ in model.blocks]
    logits = model(prompt, 0, caches)
    token = logits[:, -1:].argmax(-1)
    for i in range(GEN_TOKENS - 1):
        logits = model(token, GEN_PROMPT + i, caches)
        token = logits[:, -1:].argmax(-1)
    return batch * GEN_TOKENS / (time.perf_counter() - start)


def torch_matmul(n=2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(3))
    return 2 * n**3 / best / 1e9


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def torch_round(models, parts):
    rows = {("-", "matmul"): torch_matmul()}
    for name in models:
        m = MODELS[name]
        if "train" in parts:
            rows[(name, "train")] = torch_train(m)
        if "generate" in parts:
            for batch in (1, 8, 32):
                rows[(name, f"decode {batch}")] = torch_decode(m, batch)
    return rows


def shape_cases(m):
    """The products the policy benchmark's `POLICY_BENCH_PARTS=shapes` times, in its order:
    (batch, m, k, n, layout, name), layout "plain", "rhs^T" or "lhs^T" (a transposed view)."""
    tokens, h, ff = m["batch"] * m["seq"], m["hidden"], m["ffn"]
    d, s = m["hidden"] // m["heads"], m["seq"]
    return [
        (1, tokens, h, h, "plain", "projection"),
        (1, tokens, h, ff, "plain", "MLP up"),
        (1, tokens, ff, h, "plain", "MLP down"),
        (1, tokens, h, m["vocab"], "plain", "LM head"),
        (m["batch"] * m["heads"], s, d, s, "plain", "attention scores"),
        (1, tokens, h, h, "rhs^T", "projection, dy w^T"),
        (1, h, tokens, h, "lhs^T", "projection, x^T dy"),
        (1, h, tokens, ff, "lhs^T", "MLP up, x^T dy"),
        (1, ff, tokens, h, "lhs^T", "MLP down, x^T dy"),
    ]


def torch_shapes(models, parts=None):
    rows = {}
    for name in models:
        for batch, m, k, n, layout, what in shape_cases(MODELS[name]):
            squeeze = (lambda t: t[0]) if batch == 1 else (lambda t: t)
            if layout == "plain":
                a, b = torch.rand(batch, m, k), torch.rand(batch, k, n)
            elif layout == "rhs^T":
                a, b = torch.rand(batch, m, k), torch.rand(batch, n, k).transpose(1, 2)
            else:
                a, b = torch.rand(batch, k, m).transpose(1, 2), torch.rand(batch, k, n)
            a, b = squeeze(a), squeeze(b)
            a @ b
            best = min(timed(lambda: [a @ b for _ in range(10)]) / 10 for _ in range(5))
            rows[(name, what)] = 2 * batch * m * k * n / best / 1e9
    return rows


def memr2_table(models, threads, **extra):
    """The flex rows of the policy benchmark's table, each as its list of cells."""
    env = dict(os.environ, POLICY_BENCH_BACKENDS="flex", POLICY_BENCH_MODELS=",".join(models),
               RAYON_NUM_THREADS=str(threads), **extra)
    out = subprocess.run(
        ["cargo", "bench", "-q", "-p", "memr2-policy", "--bench", "policy"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    rows = ([c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines())
    return [cells for cells in rows if len(cells) == 6 and cells[0] == "flex"]


def memr2_shapes(models, threads, parts=None):
    rows = {}
    for cells in memr2_table(models, threads, POLICY_BENCH_PARTS="shapes"):
        if (g := re.match(r"matmul \S+ \((.*)\)$", cells[2])):
            rows[(cells[1], g.group(1))] = float(cells[4])
    return rows


def memr2_round(models, threads, parts):
    rows = {}
    for cells in memr2_table(models, threads, POLICY_BENCH_PARTS=",".join(parts)):
        model, what = cells[1], cells[2]
        if what.startswith("matmul"):
            rows[("-", "matmul")] = float(cells[4])
        elif what.startswith("train"):
            rows[(model, "train")] = float(cells[3])
        elif (g := re.match(r"generate, KV cache, batch (\d+)", what)):
            rows[(model, f"decode {g.group(1)}")] = float(cells[3])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="tiny,default")
    parser.add_argument("--shapes", action="store_true",
                        help="time the training step's products alone (GFLOP/s), forward and backward")
    parser.add_argument("--parts", default="train,generate",
                        help="which workloads to run without --shapes: train, generate or both")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",")]
    if not set(parts) <= {"train", "generate"}:
        parser.error(f"--parts takes train and/or generate, got {args.parts!r}")
    models = args.models.split(",")
    torch.set_num_threads(args.threads)
    ours, theirs = {}, {}
    ours_round, theirs_round = (memr2_shapes, torch_shapes) if args.shapes else (memr2_round, torch_round)
    for r in range(args.rounds):
        for key, value in ours_round(models, args.threads, parts).items():
            ours.setdefault(key, []).append(value)
        for key, value in theirs_round(models, parts).items():
            theirs.setdefault(key, []).append(value)
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
    print(f"PyTorch {torch.__version__}, {args.threads} threads, medians of {args.rounds} alternating rounds")
    print("(GFLOP/s)\n" if args.shapes else "(tokens/s; GFLOP/s for the matmul)\n")
    print("| model | workload | memr2 (flex) | PyTorch | memr2 / PyTorch | by round |")
    print("|---|---|---:|---:|---:|---|")
    for key in theirs:
        if key not in ours:
            continue
        a, b = statistics.median(ours[key]), statistics.median(theirs[key])
        # Each round ran both sides back to back, so a round's ratio compares like with like.
        ratios = [x / y for x, y in zip(ours[key], theirs[key])]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"| {key[0]} | {key[1]} | {a:.0f} | {b:.0f} | {a / b:.2f} | {spread} |")


if __name__ == "__main__":
    main()
