"""DeepSpeed config derivation: batch consistency, ZeRO stage knobs, overrides, dtype."""

import json

import pytest

from ckf_dist.config import ConfigError, load_config
from ckf_dist.train.deepspeed_config import deepspeed_config, resolve_dtype, write_deepspeed_config


def test_batch_sizes_consistent_and_zero3_default():
    cfg = load_config(None, ["train.micro_batch_size=4", "train.grad_accum=3"])
    ds = deepspeed_config(cfg, world_size=2, on_gpu=False)
    assert ds["train_batch_size"] == 24
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 100000
    assert ds["bf16"]["enabled"] is False


def test_stage2_and_offload_and_bf16_on_gpu():
    cfg = load_config(None, ["dist.zero_stage=2", "dist.offload=cpu"])
    ds = deepspeed_config(cfg, world_size=8, on_gpu=True)
    assert ds["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert ds["bf16"]["enabled"] is True
    assert resolve_dtype(cfg, on_gpu=False) == "fp32"


def test_overrides_merge_last_and_inconsistent_batch_is_an_error(tmp_path):
    cfg = load_config(None, ["dist.deepspeed_overrides={zero_optimization: {stage3_max_live_parameters: 5}}"])
    ds = deepspeed_config(cfg, world_size=1, on_gpu=False)
    assert ds["zero_optimization"]["stage3_max_live_parameters"] == 5
    assert ds["zero_optimization"]["stage"] == 3
    p = write_deepspeed_config(ds, tmp_path / "deepspeed.json")
    assert json.loads(p.read_text()) == ds  # only DeepSpeed keys: the engine's flags live beside the JSON
    bad = load_config(None, ["dist.deepspeed_overrides={train_batch_size: 7}"])
    with pytest.raises(ConfigError, match="train_batch_size 7 != micro batch 8 x grad accum 1 x world size 2"):
        deepspeed_config(bad, world_size=2, on_gpu=False)


def test_unreachable_ray_address_is_a_one_line_error(monkeypatch):
    from ckf_dist.train.launch import init_ray

    import ray

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    cfg = load_config(None, ["dist.ray_address=127.0.0.1:1"])
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match=r"dist.ray_address: cannot reach Ray at 127.0.0.1:1"):
        init_ray(cfg)


def test_setup_carries_the_shared_memory_op_flag_outside_the_json():
    from ckf_dist.train.deepspeed_config import deepspeed_setup

    cfg = load_config(None, [])
    cpu, gpu = deepspeed_setup(cfg, 1, on_gpu=False), deepspeed_setup(cfg, 1, on_gpu=True)
    assert cpu.shm_comm is False and gpu.shm_comm is True
    assert cpu.config == deepspeed_config(cfg, 1, on_gpu=False)
    assert all(isinstance(k, str) and not k.startswith("optimizer") for k in cpu.config)
