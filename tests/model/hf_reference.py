#!/usr/bin/env python3
"""Independent cross-check of fedpers' GPT-2 and PEFT export.

Re-implements, in Python PyTorch, the forward pass of Hugging Face's
GPT2LMHeadModel (modeling_gpt2: Conv1D = addmm(bias, x, weight), gelu_new,
causal softmax attention, tied lm_head) and PEFT's unmerged LoRA forward for
fan_in_fan_out modules (base(x) + lora_B(lora_A(x)) * lora_alpha / r), reading
the files fedpers wrote with a plain safetensors reader. Compares the logits
with those fedpers computed.

Usage: hf_reference.py DIR   (DIR holds base/, peft/, case.safetensors)
Exit 0: match; 1: mismatch; 77: python torch not available (skip).
"""
import json
import math
import struct
import sys

try:
    import torch
except ImportError:
    sys.exit(77)

DTYPES = {"F32": torch.float32, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[8 + n + begin:8 + n + end])
        t = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]]) if raw else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def forward(cfg, w, ids, lora=None):
    d, h = cfg["n_embd"], cfg["n_head"]
    eps = cfg["layer_norm_epsilon"]
    t = ids.shape[1]

    def conv1d(x, name):
        y = torch.addmm(w[name + ".bias"], x.reshape(-1, x.shape[-1]), w[name + ".weight"])
        if lora is not None and name in lora["modules"]:
            a, b = lora["modules"][name]
            y = y + (x.reshape(-1, x.shape[-1]) @ a.t()) @ b.t() * lora["scaling"]
        return y.view(*x.shape[:-1], -1)

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, (d,), w[name + ".weight"], w[name + ".bias"], eps)

    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(t)]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(d, dim=2)
        split = lambda z: z.view(z.shape[0], t, h, d // h).permute(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // h)
        att = torch.where(causal, att, torch.tensor(torch.finfo(att.dtype).min))
        y = torch.matmul(att.softmax(-1), v).permute(0, 2, 1, 3).reshape(x.shape)
        x = x + conv1d(y, p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ w["transformer.wte.weight"].t()


def main():
    root = sys.argv[1]
    cfg = json.load(open(root + "/base/config.json"))
    weights = read_safetensors(root + "/base/model.safetensors")
    case = read_safetensors(root + "/case.safetensors")
    peft_cfg = json.load(open(root + "/peft/adapter_config.json"))
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["fan_in_fan_out"] is True
    adapter = read_safetensors(root + "/peft/adapter_model.safetensors")
    modules = {}
    for name in adapter:
        if name.endswith(".lora_A.weight"):
            module = name[len("base_model.model."):-len(".lora_A.weight")]
            modules[module] = (adapter[name], adapter[name.replace("lora_A", "lora_B")])
    # PEFT matches target_modules as suffixes of module names.
    for module in modules:
        assert any(module.endswith("." + t) for t in peft_cfg["target_modules"]), module
    lora = {"modules": modules, "scaling": peft_cfg["lora_alpha"] / peft_cfg["r"]}
    with torch.no_grad():
        base = forward(cfg, weights, case["ids"])
        adapted = forward(cfg, weights, case["ids"], lora)
    err_base = (base - case["base_logits"]).abs().max().item()
    err_adapted = (adapted - case["adapted_logits"]).abs().max().item()
    moved = (case["adapted_logits"] - case["base_logits"]).abs().max().item()
    print(json.dumps({"max_abs_err_base": err_base, "max_abs_err_adapted": err_adapted,
                      "adapter_effect": moved, "lora_modules": len(modules)}))
    sys.exit(0 if err_base < 1e-4 and err_adapted < 1e-4 and moved > 1e-2 else 1)


if __name__ == "__main__":
    main()
