"""Resuming a DeepSpeed (ZeRO-3) checkpoint never runs code planted in it.

DeepSpeed's own checkpoint engine loads `*_model_states.pt` and `*_optim_states.pt` with
`torch.load(weights_only=False)`: a replaced file whose pickle calls a function would run it on
every rank. The engine swaps that load for a weights-only one; the recipe also refuses a folder
whose files differ from their manifest. Here the manifest is rewritten to match, as someone who
can write the checkpoint could: the resume must still fail without running the planted call.
One gloo rank in a subprocess (DeepSpeed's global state stays out of the test process).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist_testutils import ZERO3_MODEL_CODE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CODE = ZERO3_MODEL_CODE + r'''
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
import glob
import pickle
from pathlib import Path
from ckf_dist.fsutil import verify_manifest, write_manifest

model, tok = build()
batch = synthetic_batch(4, 48, SHAPE["vocab_size"], tok.placeholder_id, target_len=6, n_items=3, hist=4,
                        n_users=50, n_items_table=60)
engine = DeepSpeedEngine(model, cfg, deepspeed_setup(cfg, 1, on_gpu=False))
out = engine.model(batch)
engine.backward(out.loss)
engine.step()
ck = Path(sys.argv[1]) / "step-000001"
engine.save(ck, {"step": 1, "world_size": 1})
write_manifest(ck)

resumed = DeepSpeedEngine(build()[0], cfg, deepspeed_setup(cfg, 1, on_gpu=False))
assert resumed.load(ck)["step"] == 1  # an honest checkpoint loads weights-only
print("honest checkpoint resumed")

sentinel = Path(sys.argv[1]) / "code-ran"


class Planted:
    def __reduce__(self):
        return (open, (str(sentinel), "w"))


files = glob.glob(str(ck / "engine" / "*_model_states.pt")) + glob.glob(str(ck / "engine" / "*_optim_states.pt"))
assert len(files) == 2, files
for f in files:
    torch.save({"module": Planted(), "optimizer_state_dict": Planted()}, f)
assert verify_manifest(ck) is not None  # the manifest of the run names the change
write_manifest(ck)  # ... unless it is rewritten too
try:
    resumed.load(ck)
except pickle.UnpicklingError as e:
    print("refused:", str(e).splitlines()[0][:80])
else:
    raise SystemExit("a poisoned checkpoint loaded")
assert not sentinel.exists(), "the planted call ran"
dist.destroy_process_group()
print("planted call did not run")
'''


def test_poisoned_deepspeed_checkpoint_runs_no_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore::FutureWarning"}
    p = subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "honest checkpoint resumed" in p.stdout and "planted call did not run" in p.stdout
    assert not (tmp_path / "code-ran").exists()
