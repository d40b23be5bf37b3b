"""Writes the PEFT fixtures of tests/peft/fixtures: tiny random base models and LoRA adapters saved
by Hugging Face PEFT's own save_pretrained, with PEFT's own forward outputs beside them.

Nothing is downloaded: the base models are built from configurations with random weights.

    /work/venv-peft/bin/python scripts/python/make_peft_fixtures.py tests/peft/fixtures

needs torch, transformers and peft (VERSIONS.json in the output records the versions used; the
committed fixtures were made with torch 1.13, transformers 4.44.2 and peft 0.13.2). The tests read
the files with numpy only.

Written:
  llama/                 tiny LlamaForCausalLM (model.safetensors + config.json)
  llama_sharded/         the same weights in shards + model.safetensors.index.json
  gpt2/                  tiny GPT2LMHeadModel (Conv1D layers: fan_in_fan_out)
  llama_wide/            another tiny Llama with other widths (for the shape refusal)
  adapters/<name>/       adapter_config.json + adapter_model.safetensors, by PEFT
  expected/<case>.safetensors
                         x.<module> [T, d_in] and y.<module> [T, d]: PEFT's forward of the wrapped
                         module with the case's adapters active (their deltas added)
  llama_logits.safetensors
                         ids [T] (as F32) and logits [T, vocab] of PeftModel(llama, adapter plain)
  cases.json             each case: its adapters and base
  VERSIONS.json
"""

import json
import os
import shutil
import sys

import numpy as np
import torch

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

TOKENS = 5


def llama(hidden=16, inter=32, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                                   attention_bias=False, mlp_bias=False)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # order-one weights, so every term of the output matters
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=16)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(self.conv(x).mean((2, 3)))


def save_adapter(base_factory, out, seed, dtype=None, **kw):
    """get_peft_model on a fresh base, random A and B, save_pretrained into out."""
    base = base_factory()
    torch.manual_seed(seed)
    cfg = LoraConfig(init_lora_weights=False, lora_dropout=0.0, **kw)
    pm = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.4)
                if dtype is not None:  # values representable in the file's dtype
                    p.copy_(p.to(dtype).to(torch.float32))
    if dtype is not None:
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.data = p.data.to(dtype)
    pm.save_pretrained(out)
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/peft/fixtures"
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    ad = os.path.join(out, "adapters")
    exp = os.path.join(out, "expected")
    os.makedirs(ad)
    os.makedirs(exp)

    base = llama()
    base.save_pretrained(os.path.join(out, "llama"), safe_serialization=True)
    base.save_pretrained(os.path.join(out, "llama_sharded"), safe_serialization=True, max_shard_size="8KB")
    g = gpt2()
    g.save_pretrained(os.path.join(out, "gpt2"), safe_serialization=True)
    llama(hidden=24, inter=32, seed=3).save_pretrained(os.path.join(out, "llama_wide"), safe_serialization=True)

    qv = ["q_proj", "v_proj"]
    A = lambda name: os.path.join(ad, name)
    # Adapters that import.
    save_adapter(llama, A("plain"), 1, r=4, lora_alpha=8, target_modules=qv)
    save_adapter(llama, A("rank2"), 2, r=2, lora_alpha=3, target_modules=qv)
    save_adapter(llama, A("rslora"), 3, r=4, lora_alpha=6, use_rslora=True, target_modules=qv)
    # rank_pattern and alpha_pattern. In PEFT 0.13.2 the first key (rank keys, then alpha keys) that
    # matches decides both r and alpha: layers.1.self_attn.q_proj is matched by the rank key
    # "q_proj" first, so its alpha stays lora_alpha although an alpha key names it.
    save_adapter(llama, A("patterns"), 4, r=4, lora_alpha=8, target_modules=qv,
                 rank_pattern={"q_proj": 2, "layers.0.self_attn.v_proj": 3},
                 alpha_pattern={"layers.1.self_attn.q_proj": 32, "v_proj": 5})
    save_adapter(llama, A("bf16"), 5, dtype=torch.bfloat16, r=4, lora_alpha=4, target_modules=qv)
    save_adapter(llama, A("f16"), 6, dtype=torch.float16, r=3, lora_alpha=5, target_modules=qv)
    save_adapter(gpt2, A("gpt2_fan_in_fan_out"), 7, r=2, lora_alpha=4, target_modules=["c_attn"],
                 fan_in_fan_out=True)
    # Adapters that must be refused (or that disagree with the others).
    save_adapter(llama, A("q_only"), 8, r=4, lora_alpha=8, target_modules=["q_proj"])
    save_adapter(lambda: llama(hidden=24, inter=32, seed=3), A("wide"), 9, r=4, lora_alpha=8, target_modules=qv)
    save_adapter(llama, A("dora"), 10, r=4, lora_alpha=8, target_modules=qv, use_dora=True)
    save_adapter(llama, A("modules_to_save"), 11, r=4, lora_alpha=8, target_modules=qv, modules_to_save=["lm_head"])
    save_adapter(llama, A("embedding"), 12, r=4, lora_alpha=8, target_modules=["embed_tokens"])
    save_adapter(ConvNet, A("conv"), 13, r=2, lora_alpha=4, target_modules=["conv"])
    save_adapter(llama, A("bias_all"), 14, r=4, lora_alpha=8, target_modules=qv, bias="all")

    # PEFT's own forward of each wrapped module, with the case's adapters active together.
    cases = {
        "plain": (["plain"], "llama"),
        "two_ranks": (["plain", "rank2"], "llama"),
        "rslora": (["rslora"], "llama"),
        "patterns": (["patterns"], "llama"),
        "bf16": (["bf16"], "llama"),
        "mixed": (["plain", "rank2", "rslora", "patterns", "bf16", "f16"], "llama"),
        "gpt2_fan_in_fan_out": (["gpt2_fan_in_fan_out"], "gpt2"),
    }
    for case, (names, base_dir) in cases.items():
        bm = (llama() if base_dir == "llama" else gpt2()).float()
        pm = PeftModel.from_pretrained(bm, A(names[0]), adapter_name=names[0])
        for n in names[1:]:
            pm.load_adapter(A(n), adapter_name=n)
        pm.base_model.set_adapter(names)
        pm.eval()
        torch.manual_seed(100)
        tensors = {}
        for mod_name, mod in pm.base_model.model.named_modules():
            if not hasattr(mod, "lora_A") or not hasattr(mod, "base_layer"):
                continue
            if not any(n in mod.lora_A for n in names):
                continue
            d_in = mod.in_features
            x = torch.randn(TOKENS, d_in)
            with torch.no_grad():
                y = mod(x)
            tensors["x." + mod_name] = x.contiguous()
            tensors["y." + mod_name] = y.contiguous()
        save_file(tensors, os.path.join(exp, case + ".safetensors"))

    # Whole-model logits with one adapter: the example runtime's reference.
    pm = PeftModel.from_pretrained(llama(), A("plain")).eval()
    ids = torch.tensor([[3, 17, 9, 28, 1, 12, 5]])
    with torch.no_grad():
        logits = pm(input_ids=ids).logits[0]
        base_logits = llama()(input_ids=ids).logits[0]
    save_file({"ids": ids[0].to(torch.float32), "logits": logits.contiguous(), "base_logits": base_logits.contiguous()},
              os.path.join(out, "llama_logits.safetensors"))

    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({k: {"adapters": v[0], "base": v[1]} for k, v in cases.items()}, f, indent=1)
    with open(os.path.join(out, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                   "numpy": np.__version__}, f, indent=1)
    # README files PEFT writes are boilerplate; drop them to keep the fixtures small.
    for root, _, files in os.walk(out):
        for fn in files:
            if fn == "README.md" or fn == "generation_config.json":
                os.remove(os.path.join(root, fn))


if __name__ == "__main__":
    main()
