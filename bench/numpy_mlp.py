"""A hand-written numpy loop of the benchmark's MLP (784-128-256-10, batch 64, Adam, float32): a ceiling figure.

Optional: `deno task bench --numpy` runs it with /usr/bin/python3 when numpy is installed; nothing else needs it.
It prints {"numpy": version, "full": steps/s, "lora4": steps/s} (medians of several runs) as JSON.
"""
import json
import sys
import time

import numpy as np

QUICK = "--quick" in sys.argv
rng = np.random.default_rng(123)
f32 = np.float32
B, SIZES = 64, [784, 128, 256, 10]
x = rng.random((B, 784), dtype=f32)
onehot = np.eye(10, dtype=f32)[rng.integers(0, 10, B)]
W = [(rng.random((i, o), dtype=f32) - f32(0.5)) * f32(2 / np.sqrt(i)) for i, o in zip(SIZES, SIZES[1:])]
b = [np.zeros(o, dtype=f32) for o in SIZES[1:]]


class Adam:
    def __init__(self, params, lr=0.005, b1=0.9, b2=0.999, eps=1e-8):
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0

    def step(self, params, grads):
        self.t += 1
        c2 = np.sqrt(1 - self.b2**self.t)
        alpha = f32(self.lr * c2 / (1 - self.b1**self.t))
        eps = f32(self.eps * c2)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= f32(self.b1)
            m += f32(1 - self.b1) * g
            v *= f32(self.b2)
            v += f32(1 - self.b2) * g * g
            p -= alpha * m / (np.sqrt(v) + eps)


def loss_grad(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    return (p - onehot) / f32(B)


def full_step(opt):
    h1 = np.maximum(x @ W[0] + b[0], 0)
    h2 = np.maximum(h1 @ W[1] + b[1], 0)
    d3 = loss_grad(h2 @ W[2] + b[2])
    d2 = (d3 @ W[2].T) * (h2 > 0)
    d1 = (d2 @ W[1].T) * (h1 > 0)
    grads = [x.T @ d1, h1.T @ d2, h2.T @ d3, d1.sum(0), d2.sum(0), d3.sum(0)]
    opt.step(W + b, grads)


R, ALPHA = 4, f32(8)
A = [rng.standard_normal((i, R), dtype=f32) / f32(np.sqrt(R)) for i in SIZES[:-1]]
Bm = [np.zeros((R, o), dtype=f32) for o in SIZES[1:]]


def lora_step(opt):
    # (x·A)·B, never forming A·B; the frozen W and b take no gradient.
    xa = [None] * 3
    hs = [x]
    for i in range(3):
        xa[i] = hs[-1] @ A[i] * ALPHA
        out = hs[-1] @ W[i] + b[i] + xa[i] @ Bm[i]
        hs.append(np.maximum(out, 0) if i < 2 else out)
    d = loss_grad(hs[3])
    gA, gB = [None] * 3, [None] * 3
    for i in (2, 1, 0):
        gB[i] = xa[i].T @ d
        dxa = (d @ Bm[i].T) * ALPHA
        gA[i] = hs[i].T @ dxa
        if i > 0:
            d = (d @ W[i].T + dxa @ A[i].T) * (hs[i] > 0)
    opt.step(A + Bm, gA + gB)


def rate(step, params):
    opt = Adam(params)
    for _ in range(20):
        step(opt)
    runs = []
    for _ in range(3 if QUICK else 7):
        n = 50 if QUICK else 200
        t = time.perf_counter()
        for _ in range(n):
            step(opt)
        runs.append(n / (time.perf_counter() - t))
    return float(np.median(runs))


print(json.dumps({"numpy": np.__version__, "full": rate(full_step, W + b), "lora4": rate(lora_step, A + Bm)}))
