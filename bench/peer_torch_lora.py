#!/usr/bin/env python3
"""Peer benchmark: the same GPT-2 + dual-LoRA training step as `fedpers bench
train`, in Python PyTorch (Debian's python3-torch), for a side-by-side ratio.

Prints one JSON object: median step seconds and tokens per second.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


class LoraConv1D(torch.nn.Module):
    def __init__(self, d_in, d_out, r_g, a_g, r_u, a_u):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d_in, d_out) * 0.02, requires_grad=False)
        self.bias = torch.nn.Parameter(torch.zeros(d_out), requires_grad=False)
        bound = 1.0 / math.sqrt(d_in)
        self.register_buffer("lora_A_global", (torch.rand(r_g, d_in) * 2 - 1) * bound)
        self.lora_B_global = torch.nn.Parameter(torch.zeros(d_out, r_g))
        self.lora_A_residual = torch.nn.Parameter((torch.rand(r_u, d_in) * 2 - 1) * bound)
        self.lora_B_residual = torch.nn.Parameter(torch.zeros(d_out, r_u))
        self.s_g, self.s_u = a_g / r_g, a_u / r_u
        self.d_out = d_out

    def forward(self, x):
        shape = x.shape[:-1] + (self.d_out,)
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.addmm(self.bias, x2, self.weight)
        y = torch.addmm(y, x2 @ self.lora_A_global.t(), self.lora_B_global.t(), alpha=self.s_g)
        y = torch.addmm(y, x2 @ self.lora_A_residual.t(), self.lora_B_residual.t(), alpha=self.s_u)
        return y.view(shape)


class Block(torch.nn.Module):
    def __init__(self, d, h, ctx, lora):
        super().__init__()
        self.h = h
        self.ln_1 = torch.nn.LayerNorm(d)
        self.c_attn = LoraConv1D(d, 3 * d, *lora)
        self.attn_proj = LoraConv1D(d, d, *lora)
        self.ln_2 = torch.nn.LayerNorm(d)
        self.c_fc = LoraConv1D(d, 4 * d, *lora)
        self.mlp_proj = LoraConv1D(4 * d, d, *lora)
        self.register_buffer("causal", torch.full((ctx, ctx), float("-inf")).triu(1))
        for p in list(self.ln_1.parameters()) + list(self.ln_2.parameters()):
            p.requires_grad_(False)

    def forward(self, x):
        b, t, c = x.shape
        hd = c // self.h
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=-1)
        heads = lambda z: z.view(b, t, self.h, hd).transpose(1, 2).reshape(b * self.h, t, hd)
        q, k, v = heads(q), heads(k), heads(v)
        att = torch.baddbmm(self.causal[:t, :t], q, k.transpose(1, 2), alpha=1.0 / math.sqrt(hd)).softmax(-1)
        y = torch.bmm(att, v).view(b, self.h, t, hd).transpose(1, 2).reshape(b, t, c)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt2(torch.nn.Module):
    def __init__(self, n_layer, d, h, ctx, vocab, lora):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, d)
        self.wpe = torch.nn.Embedding(ctx, d)
        self.blocks = torch.nn.ModuleList(Block(d, h, ctx, lora) for _ in range(n_layer))
        self.ln_f = torch.nn.LayerNorm(d)
        for p in list(self.wte.parameters()) + list(self.wpe.parameters()) + list(self.ln_f.parameters()):
            p.requires_grad_(False)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.wte.weight.t()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-positions", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=259)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--global-rank", type=int, default=8)
    ap.add_argument("--global-alpha", type=float, default=16)
    ap.add_argument("--residual-rank", type=int, default=4)
    ap.add_argument("--residual-alpha", type=float, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    lora = (a.global_rank, a.global_alpha, a.residual_rank, a.residual_alpha)
    model = Gpt2(a.n_layer, a.n_embd, a.n_head, a.n_positions, a.vocab, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    ids = torch.randint(0, 256, (a.batch, a.n_positions + 1))
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"torch_version": torch.__version__, "threads": torch.get_num_threads(),
                      "median_step_seconds": med, "tokens_per_s": a.batch * a.n_positions / med,
                      "steps": a.steps}))


if __name__ == "__main__":
    main()
