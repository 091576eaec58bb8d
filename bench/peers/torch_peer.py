"""PyTorch peer of `deno task bench --peers`: the bench's MLP and tiny GPT, trained by PyTorch in this process.

Started by bench/peers.ts once per interpreter and thread count; it reads one JSON request per line on standard
input and answers each with one JSON line on standard output:

    {"op": "info"}                                        -> {"torch": "2.13.0+cpu", "threads": 1, ...}
    {"op": "run", "model": "mlp", "training": "lora", "seconds": 0.4}
                                                          -> {"steps": 31, "seconds": 0.41, "rate": 75.6}

The models are the project's (lib/mlp.ts, lib/gpt/model.ts) written in plain PyTorch: the MLP 784-128-256-10 with
ReLU, batch 64, Adam lr 0.005, full finetuning or LoRA r=4 (alpha 8) on its three layers; the GPT with 2 pre-norm
blocks, width 64, 4 heads, context 16, vocabulary 30, GELU, batch 64 windows, Adam lr 1e-3, full finetuning or
LoRA r=8 (alpha 16) on q_proj and v_proj. LoRA is written out (the frozen layer plus scaling * x A B), so this runs
on PyTorch versions that PEFT does not support. Nothing is downloaded; the data are fixed random batches.
"""
import json
import math
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


def threads_from_argv() -> int:
    for arg in sys.argv[1:]:
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus scaling * (x @ A) @ B, A [in, r] Kaiming-uniform, B [r, out] zero (as lib/lora.ts)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(base.in_features, rank))
        nn.init.kaiming_uniform_(self.A.T, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, base.out_features))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.A) @ self.B * self.scaling


def mlp(lora: bool) -> nn.Module:
    layers = [nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10)]
    if lora:
        layers = [LoRALinear(m, 4, 8) if isinstance(m, nn.Linear) else m for m in layers]
    return nn.Sequential(*layers)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.heads = heads
        self.register_buffer("mask", torch.triu(torch.full((context, context), float("-inf")), 1))

    def forward(self, x):
        b, t, c = x.shape
        split = lambda y: y.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads) + self.mask[:t, :t], dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, context)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=30, context=16, layers=2, heads=4, width=64):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, context) for _ in range(layers))
        self.ln_f, self.lm_head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt(lora: bool) -> nn.Module:
    model = GPT()
    if lora:
        for p in model.parameters():
            p.requires_grad_(False)
        for block in model.blocks:
            block.attn.q_proj = LoRALinear(block.attn.q_proj, 8, 16)
            block.attn.v_proj = LoRALinear(block.attn.v_proj, 8, 16)
    return model


def make(model_name: str, training: str):
    torch.manual_seed(123)
    lora = training == "lora"
    if model_name == "mlp":
        model = mlp(lora)
        x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
        lr = 0.005
        loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    else:
        model = gpt(lora)
        ids, targets = torch.randint(1, 30, (64, 16)), torch.randint(1, 30, (64, 16))
        lr = 1e-3
        loss_fn = lambda: F.cross_entropy(model(ids).view(-1, 30), targets.view(-1))  # noqa: E731
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(5):  # warm-up
        step()
    return step


def main():
    torch.set_num_threads(threads_from_argv())
    steps = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "info":
            answer = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0]}
        else:
            key = (request["model"], request["training"])
            if key not in steps:
                steps[key] = make(*key)
            step, target = steps[key], float(request["seconds"])
            count, start = 0, time.perf_counter()
            while True:
                loss = step()
                count += 1
                elapsed = time.perf_counter() - start
                if elapsed >= target and count >= 2:
                    break
            answer = {"steps": count, "seconds": elapsed, "rate": count / elapsed, "loss": float(loss)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
