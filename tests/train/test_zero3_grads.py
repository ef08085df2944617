"""One ZeRO-3 step's gradients equal the local engine's (DeepSpeed on gloo, one CPU rank).

ZeRO-3 partitions every trainable tensor (persistence threshold 0) and hooks each module's
forward and backward; the model's output must be a type it can see into (CKFOutput is a
ModelOutput), else DeepSpeed warns that its backward hooks may not fire. Runs in a subprocess: it
initialises torch.distributed and DeepSpeed's global state.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CODE = r'''
import os, socket, sys
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from ckf_dist.bench.e2e_gpu import SyntheticTokenizer, synthetic_batch
from ckf_dist.config import load_config
from ckf_dist.models.ckf import CKFModel
from ckf_dist.train.deepspeed_config import deepspeed_setup
from ckf_dist.train.engine import DeepSpeedEngine

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
             intermediate_size=64, vocab_size=300)
cfg = load_config(None, ["train.curriculum=false", "model.max_length=64", "lora.shared.r=2", "lora.task.r=2",
                         "kernels.backend=torch", "train.micro_batch_size=4", "train.grad_accum=1",
                         "dist.zero_stage=3", "dist.param_persistence_threshold=0", "train.dtype=fp32", "cf.dim=8"])


def build():
    torch.manual_seed(0)
    lc = LlamaConfig(**SHAPE, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    llm = LlamaForCausalLM._from_config(lc, dtype=torch.float32)
    tok = SyntheticTokenizer(SHAPE["vocab_size"], cfg.model.placeholder_token)
    g = torch.Generator().manual_seed(0)
    m = CKFModel(llm, tok, torch.randn(50, cfg.cf.dim, generator=g), torch.randn(60, cfg.cf.dim, generator=g), cfg)
    with torch.no_grad():  # zero-initialised B would leave every A without a gradient
        for n, p in m.named_parameters():
            if ".lora_" in n and n.endswith("B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m, tok


local, tok = build()
batch = synthetic_batch(4, 48, SHAPE["vocab_size"], tok.placeholder_id, target_len=6, n_items=3, hist=4,
                        n_users=50, n_items_table=60)
out = local(batch)
out.loss.backward()
want_loss = out.loss.detach()
want = {n: p.grad.clone() for n, p in local.trainable_named_parameters().items()}

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
from deepspeed.utils import safe_get_full_grad

if os.environ.get("CKF_TEST_ACTIVATION_CHECKPOINTING") == "1":
    cfg.train.activation_checkpointing = True  # the ZeRO-3 model recomputes; the local reference does not
model, _ = build()
assert any(getattr(m, "gradient_checkpointing", False) for m in model.llm.modules()) == cfg.train.activation_checkpointing
engine = DeepSpeedEngine(model, cfg, deepspeed_setup(cfg, 1, on_gpu=False))
named = engine.model.trainable_named_parameters()
assert named and all(p.numel() == 0 for p in named.values()), "ZeRO-3 left a trainable tensor unpartitioned"
out = engine.model(batch)
assert isinstance(out, dict) and set(out) >= {"loss", "task_losses"}, type(out)
engine.backward(out.loss)
torch.testing.assert_close(out.loss.detach(), want_loss)
for n, p in named.items():
    g = safe_get_full_grad(p)
    assert g is not None, f"no ZeRO-3 gradient for {n}"
    assert g.abs().sum() > 0 or want[n].abs().sum() == 0, n
    torch.testing.assert_close(g, want[n], rtol=1e-5, atol=1e-7, msg=n)
dist.destroy_process_group()
print("grads equal:", len(named))
'''


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation_checkpointing"])
def test_zero3_step_gradients_equal_the_local_engine(checkpointing):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "CKF_TEST_ACTIVATION_CHECKPOINTING": "1" if checkpointing else "0"}
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "grads equal: " in proc.stdout
    n = int(proc.stdout.split("grads equal: ")[1].split()[0])
    assert n > 10
    assert "unknown inputs or outputs type" not in output, "DeepSpeed cannot see into the model's output"
