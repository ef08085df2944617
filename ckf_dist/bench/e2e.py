"""End-to-end training throughput: ``ckf bench e2e [--config FILE] [--device cpu|cuda] [--quick] [--out DIR] [key=value ...]``.

Every number in one run is measured in that run (same process, same shards, same tiny LLM), so
the ratios compare like with like. Rows (CPU):

  ckf_local           the real recipe (``CKFRecipe`` through ``launch``, ``dist.launcher=local``),
                      mixed-task micro-batches, Multi-LoRA (shared + per-row task adapter), CF
                      vectors spliced into the prompt, and the text-only curriculum twin of every
                      sample (``train.curriculum=true``, the default): tokens = non-pad tokens of
                      the CF prompt + its text twin, as ``perf/tokens_per_s`` counts them.
  ckf_local_no_twin   the same with ``train.curriculum=false`` (CF prompt only).
  hf_peft_per_task    the baseline: what CKF's reference code does. For each task in turn a PEFT
                      ``LoraConfig`` adapter (the union of ``lora.shared.targets`` and
                      ``lora.task.targets``, the same ranks/alpha through ``rank_pattern``) on the same
                      frozen tiny LLM, micro-batches of that task only, text prompts
                      (``prompt_text`` + target), the plain HF loss (logits at every position),
                      AdamW + clipping + schedule like the recipe. Steps per task in proportion to
                      the task's share of the recipe's stream. Tokens = non-pad tokens. Its prompts
                      are tokenized *before* timing (as ``datasets.map`` does), so the baseline's
                      rate leaves out tokenization, which the recipe's rate includes: the ratio is
                      conservative for ckf_dist.
  ckf_ray_wN          the recipe under ``dist.launcher=ray`` with ``dist.num_workers=N`` (DeepSpeed
                      ZeRO-``dist.zero_stage`` on gloo), read from run.dir/train/tb/metrics.jsonl.
  data_pipeline_*     TrainStream + Collator through the recipe's DataLoader (no model): samples/s
                      and tokens/s the pipeline can supply, vs what the trainer consumed; and what
                      one ready batch costs the consumer (``next()`` when the loader is ahead).

The diagnosis (default mode; ``bench.diagnose=true|false``) times one step without the DataLoader
on the same samples batched three ways (stream-order mixed, single-task, length-grouped mixed)
for ckf_dist's model and for the PEFT step: it separates the cost of mixed-batch padding from the
cost of the step itself.

Rates come from the recipe's own ``perf/*`` windows (``train.log_every`` steps each) with the first
window dropped as warm-up; the baseline drops the same number of leading steps. The default mode
runs every local row ``bench.repeats`` times, interleaved, and keeps the best (the machine may be
shared); all values are in the JSON.

Bench-only options go with the config overrides as ``bench.<key>=<value>``:
  bench.workers=[1,2]   Ray worker counts (``[]`` skips Ray);   bench.repeats=N
  bench.data_batches=N  micro-batches timed for the data pipeline;   bench.diagnose=true|false
  (cuda) bench.seq_len=1024 bench.micro_batch=4 bench.steps=10 bench.warmup=3 bench.target_len=16

``--device cuda`` (a GPU machine with torch, transformers and peft; no ray, deepspeed or
webdataset needed): one process, ``dist.launcher=local`` engine, a random-init LLaMA of the 7B shape
(hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000) in bf16, sequence length 1024,
synthetic token batches (no shards), mixed tasks, no activation checkpointing: tokens/s/GPU and
MFU with the LoRA-aware count (4N + attention) and the 6N convention
(:func:`ckf_dist.telemetry.logger.flops_per_token`). No module of the benchmark imports ray,
deepspeed or webdataset at import time, and the cuda path never imports them.

Modules: ``e2e_options`` (the typed ``bench.*`` options), ``e2e_recipe`` (the recipe, local and
Ray), ``e2e_peft`` (the baseline), ``e2e_data`` (data pipeline, batching diagnosis), ``e2e_gpu``
(``--device cuda``); this module runs the CPU comparison and writes its table.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ckf_dist.bench.common import device_name, load_avg, utc_date, write_rows
from ckf_dist.bench.e2e_data import diagnose_batching, measure_data_pipeline
from ckf_dist.bench.e2e_gpu import run_gpu_bench
from ckf_dist.bench.e2e_options import split_bench_overrides
from ckf_dist.bench.e2e_peft import measure_peft_per_task
from ckf_dist.bench.e2e_recipe import claim_run_dir, measure_ray, measure_recipe, prepare_inputs
from ckf_dist.config import ConfigError, load_config

TARGET_RATIO = 1.5
"""Target: ckf_dist tokens/s >= 1.5x the HF + PEFT per-task loop (CPU tiny config)."""
TARGET_DATA_WAIT = 0.02
"""Target: data-wait fraction < 2%."""

# Settings the bench applies before the user's overrides (which win). None of them changes the
# training step being measured: they shorten setup (CF grid, tiny pre-training) and keep
# validation and mid-run checkpoints out of the timed windows.
CPU_DEFAULTS = [
    "dist.launcher=local", "dist.num_workers=1", "cf.baselines=[mf]", "cf.weight_decays=[0.001]",
    "tiny.pretrain_steps=20", "train.eval_every=0",
]

COLUMNS = [
    "row", "launcher", "workers", "tokens_per_s", "samples_per_s", "tokens_per_s_per_worker",
    "ratio_tokens_vs_baseline", "ratio_samples_vs_baseline", "data_wait_frac", "step_s",
    "windows", "load_avg_1m", "all_tokens_per_s", "includes",
]



INCLUDES = {
    "ckf_local": "recipe (launcher=local): mixed-task batches, CF prompt + text-only curriculum twin "
                 "(tokens = both), streaming + collation in 1 DataLoader worker, AdamW, clip, logging",
    "ckf_local_no_twin": "as ckf_local with train.curriculum=false: CF prompt only",
    "hf_peft_per_task": "HF + PEFT, one task adapter at a time (same targets/ranks), text prompt only, "
                        "pre-tokenized (tokenization NOT timed), HF loss over all positions, AdamW, clip",
    "ckf_ray": "recipe (launcher=ray, DeepSpeed ZeRO on gloo), summed over workers, mixed batches + twin",
    "data_pipeline": "TrainStream + Collator (CF prompt + twin), no model",
}


def _best(results: list[dict]) -> dict:
    best = dict(max(results, key=lambda r: r["tokens_per_s"]))
    best["all_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in results]
    return best


def _row(name: str, launcher: str, workers: int, res: dict, includes: str, baseline: Optional[dict]) -> dict:
    row = {
        "row": name, "launcher": launcher, "workers": workers,
        "tokens_per_s": round(res["tokens_per_s"], 1),
        "samples_per_s": round(res["samples_per_s"], 2),
        "tokens_per_s_per_worker": round(res["tokens_per_s_per_worker"], 1),
        "ratio_tokens_vs_baseline": round(res["tokens_per_s"] / baseline["tokens_per_s"], 3) if baseline else "",
        "ratio_samples_vs_baseline": round(res["samples_per_s"] / baseline["samples_per_s"], 3) if baseline else "",
        "data_wait_frac": "" if res.get("data_wait_frac") is None else round(res["data_wait_frac"], 4),
        "step_s": round(res["step_s"], 4),
        "windows": res.get("windows", ""),
        "load_avg_1m": res.get("load_avg_1m", ""),
        "all_tokens_per_s": " ".join(str(x) for x in res.get("all_tokens_per_s", [round(res["tokens_per_s"], 1)])),
        "includes": includes,
    }
    return row


def run_e2e_bench(
    config: Optional[str] = "configs/quickstart.yaml",
    device: str = "cpu",
    quick: bool = False,
    out_dir: str | Path = "runs/bench/e2e",
    overrides: Sequence[str] = (),
    workers: Optional[Sequence[int]] = None,
    repeats: Optional[int] = None,
    data_batches: Optional[int] = None,
    diagnose: Optional[bool] = None,
) -> dict[str, Any]:
    """Run the benchmark; print a table; write ``e2e_<device>[_quick].csv`` and ``.json`` under out_dir.

    Returns {"meta", "rows", "summary"}. ``workers`` (default [1, 2]; ``[]`` skips Ray),
    ``repeats`` and ``data_batches`` may also come as ``bench.*`` overrides.
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"bench e2e: --device must be cpu or cuda, got {device!r}")
    cfg_overrides, opts = split_bench_overrides(overrides)
    out_dir = Path(out_dir)
    if device == "cuda":
        return run_gpu_bench(out_dir, quick, cfg_overrides, opts)
    out_dir.mkdir(parents=True, exist_ok=True)

    workers = list(opts.get("workers", workers if workers is not None else [1, 2]))
    repeats = int(opts.get("repeats", repeats if repeats is not None else (1 if quick else 2)))
    data_batches = int(opts.get("data_batches", data_batches if data_batches is not None else (40 if quick else 200)))
    diagnose = bool(opts.get("diagnose", diagnose if diagnose is not None else not quick))
    steps, log_every = (12, 3) if quick else (60, 10)
    ray_steps, ray_log = (8, 2) if quick else (30, 5)
    # The bench's settings first, then the user's overrides (they win; run.dir defaults to --out/run).
    user = [f"run.dir={out_dir / 'run'}", *cfg_overrides]
    base_local = [*CPU_DEFAULTS, f"train.steps={steps}", f"train.log_every={log_every}", f"train.save_every={10**6}"]
    cfg = load_config(config, [*base_local, *user])
    meta = dict(
        device=device, device_name=device_name(device), cpus=os.cpu_count(), quick=quick,
        torch=torch.__version__, threads=torch.get_num_threads(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        date=utc_date(), load_avg_1m_start=load_avg(),
        config=config, overrides=list(overrides), run_dir=str(cfg.run_dir),
        steps=cfg.train.steps, log_every=cfg.train.log_every, micro_batch_size=cfg.train.micro_batch_size,
        warmup="first logged window (train.log_every steps) dropped; baseline drops as many steps",
        repeats=repeats, ray_workers=workers,
    )
    print(f"e2e bench on {meta['device_name']} ({os.cpu_count()} cores, torch {meta['torch']}, {meta['threads']} threads, "
          f"OMP_NUM_THREADS={meta['omp_num_threads']}, load average {meta['load_avg_1m_start']})"
          f"{' [quick]' if quick else ''}", flush=True)
    t_all = time.perf_counter()
    claim_run_dir(cfg)
    prepare_inputs(cfg)
    from ckf_dist.config import save_config

    save_config(cfg, out_dir / "config.yaml")
    warm_steps = cfg.train.log_every

    # (a) interleaved repeats of the local measurements. ckf_local runs the config as given (the
    # quickstart has the curriculum twin on); ckf_local_no_twin forces it off, after every override.
    twin = bool(cfg.train.curriculum and cfg.model.cf_fusion)
    variants = {"ckf_local": cfg}
    if twin:
        variants["ckf_local_no_twin"] = load_config(config, [*base_local, *user, "train.curriculum=false"])
    res: dict[str, list[dict]] = {k: [] for k in [*variants, "hf_peft_per_task"]}
    for _ in range(repeats):
        for name, c in variants.items():
            print(f"measuring: {name} (ckf_dist recipe, dist.launcher=local)", flush=True)
            res[name].append(measure_recipe(c))
            if name == "ckf_local":
                print("measuring: hf_peft_per_task (HF + PEFT, one task adapter at a time)", flush=True)
                res["hf_peft_per_task"].append(measure_peft_per_task(cfg, warm_steps))
    best = {k: _best(v) for k, v in res.items()}
    base = best["hf_peft_per_task"]

    # (c) data pipeline alone: the recipe's loader settings, and inline (0 workers) for reference
    print("measuring: data pipeline alone", flush=True)
    data_rows = {}
    for w in dict.fromkeys([cfg.loader.workers, 0]):
        data_rows[w] = measure_data_pipeline(cfg, data_batches, w)

    diag: list[dict] = []
    if diagnose:
        print("diagnosing: the step on mixed / single-task / length-grouped batches (no DataLoader)", flush=True)
        diag = diagnose_batching(cfg)

    # (b) Ray 1 vs 2 workers
    ray_res: dict[int, dict] = {}
    if workers:
        print(f"measuring: Ray Train workers {workers}", flush=True)
        ray_base = [*CPU_DEFAULTS, f"train.steps={ray_steps}", f"train.log_every={ray_log}", f"train.save_every={10**6}"]
        ray_res = measure_ray(config, [*ray_base, *user, "dist.max_failures=0"], workers)

    inc_local = INCLUDES["ckf_local"] if twin else INCLUDES["ckf_local"].replace(" + text-only curriculum twin (tokens = both)", " only (no twin)")
    rows = [_row("ckf_local", "local", 1, best["ckf_local"], inc_local, base)]
    if "ckf_local_no_twin" in best:
        rows.append(_row("ckf_local_no_twin", "local", 1, best["ckf_local_no_twin"], INCLUDES["ckf_local_no_twin"], base))
    rows.append(_row("hf_peft_per_task", "local", 1, base, INCLUDES["hf_peft_per_task"], base))
    for n, r in ray_res.items():
        rows.append(_row(f"ckf_ray_w{n}", "ray", n, r, INCLUDES["ckf_ray"] + f", ZeRO-{cfg.dist.zero_stage}", base))
    for w, r in data_rows.items():
        rows.append(_row(f"data_pipeline_loader{w}", "-", 0, r,
                         INCLUDES["data_pipeline"] + (f", {w} DataLoader worker process(es)" if w else ", inline in the caller"), None))

    trainer = best["ckf_local"]
    cfg_loader = data_rows[cfg.loader.workers]
    summary: dict[str, Any] = {
        "ratio_tokens_ckf_vs_peft": round(trainer["tokens_per_s"] / base["tokens_per_s"], 3),
        "ratio_samples_ckf_vs_peft": round(trainer["samples_per_s"] / base["samples_per_s"], 3),
        "data_wait_frac": round(trainer["data_wait_frac"], 4),
        "data_supply_vs_consumption": round(cfg_loader["samples_per_s"] / trainer["samples_per_s"], 2),
        "next_batch_cpu_ms": round(cfg_loader["next_cpu_ms"], 2),
        "next_batch_wall_ms": round(cfg_loader["next_wall_ms"], 2),
        "next_batch_vs_step": round(cfg_loader["next_wall_ms"] / 1e3 / trainer["step_s"], 4),
        "pad_efficiency_ckf_batches": round(cfg_loader["pad_efficiency"], 3),
        "pad_efficiency_peft_batches": round(base["pad_efficiency"], 3),
        "peft_steps_per_task": base["steps_per_task"],
        "twin": twin,
    }
    if "ckf_local_no_twin" in best:
        nt = best["ckf_local_no_twin"]
        summary["ratio_tokens_ckf_no_twin_vs_peft"] = round(nt["tokens_per_s"] / base["tokens_per_s"], 3)
        summary["ratio_samples_ckf_no_twin_vs_peft"] = round(nt["samples_per_s"] / base["samples_per_s"], 3)
        summary["data_wait_frac_no_twin"] = round(nt["data_wait_frac"], 4)
    if len(ray_res) >= 2:
        ws = sorted(ray_res)
        summary["ray_scaling"] = {f"w{n}_vs_w{ws[0]}": round(ray_res[n]["tokens_per_s"] / ray_res[ws[0]]["tokens_per_s"], 3) for n in ws[1:]}
    if 1 in ray_res:
        summary["ray_w1_vs_local"] = round(ray_res[1]["tokens_per_s"] / trainer["tokens_per_s"], 3)
    summary["target_ratio_met"] = summary["ratio_tokens_ckf_vs_peft"] >= TARGET_RATIO
    summary["target_data_wait_met"] = summary["data_wait_frac"] < TARGET_DATA_WAIT
    meta["load_avg_1m_end"] = load_avg()
    meta["wall_s"] = round(time.perf_counter() - t_all, 1)
    meta["includes"] = INCLUDES
    if diag:
        ref = {d["model"]: d["tokens_per_s"] for d in diag if d["batches"] == "mixed (stream order)"}
        peft_single = next(d["tokens_per_s"] for d in diag if d["model"] == "HF + PEFT step" and d["batches"] == "single-task")
        for d in diag:
            d["vs_mixed_same_model"] = round(d["tokens_per_s"] / ref[d["model"]], 3)
            d["vs_peft_single_task"] = round(d["tokens_per_s"] / peft_single, 3)
            for k in ("tokens_per_s", "samples_per_s"):
                d[k] = round(d[k], 1)
            d["step_s"], d["pad_efficiency"] = round(d["step_s"], 4), round(d["pad_efficiency"], 3)
    result = {"meta": meta, "rows": rows, "summary": summary, "diagnosis": diag, "raw": {k: v for k, v in res.items()},
              "ray": {str(k): v for k, v in ray_res.items()}, "data": {str(k): v for k, v in data_rows.items()}}
    _print_table(rows)
    if diag:
        _print_diagnosis(diag)
    _print_summary(summary, meta)
    write_rows(out_dir, f"e2e_{device}{'_quick' if quick else ''}", rows, result, COLUMNS)
    return result


def _print_table(rows: list[dict]) -> None:
    cols = [c for c in COLUMNS if c not in ("includes", "all_tokens_per_s")]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print()
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))
    print("\nwhat each row includes:")
    for r in rows:
        print(f"  {r['row']}: {r['includes']}")


def _print_diagnosis(diag: list[dict]) -> None:
    cols = ["model", "batches", "tokens_per_s", "samples_per_s", "step_s", "pad_efficiency", "vs_mixed_same_model", "vs_peft_single_task"]
    widths = {c: max(len(c), *(len(str(d.get(c, ""))) for d in diag)) for c in cols}
    print("\ndiagnosis: one step (fwd + bwd + optimizer) without the DataLoader, the same samples batched differently")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for d in diag:
        print("  ".join(str(d.get(c, "")).ljust(widths[c]) for c in cols))


def _print_summary(s: dict, meta: dict) -> None:
    print()
    no_twin = (f" (no twin: {s['ratio_tokens_ckf_no_twin_vs_peft']}x tokens/s, {s['ratio_samples_ckf_no_twin_vs_peft']}x samples/s)"
               if "ratio_tokens_ckf_no_twin_vs_peft" in s else "")
    print(f"ckf_dist vs HF+PEFT per-task loop: {s['ratio_tokens_ckf_vs_peft']}x tokens/s, {s['ratio_samples_ckf_vs_peft']}x samples/s"
          f"{no_twin}; target >= {TARGET_RATIO}x tokens/s: {'met' if s['target_ratio_met'] else 'MISSED'}")
    wait_nt = f" (no twin {s['data_wait_frac_no_twin']:.2%})" if "data_wait_frac_no_twin" in s else ""
    print(f"data-wait fraction {s['data_wait_frac']:.2%}{wait_nt}; target < {TARGET_DATA_WAIT:.0%}: "
          f"{'met' if s['target_data_wait_met'] else 'MISSED'}; pipeline supplies {s['data_supply_vs_consumption']}x "
          f"the samples/s the trainer consumes; a ready batch costs the trainer {s['next_batch_wall_ms']} ms "
          f"({s['next_batch_cpu_ms']} ms CPU) = {s['next_batch_vs_step']:.1%} of its step")
    print(f"non-pad share of padded tokens: ckf mixed batches {s['pad_efficiency_ckf_batches']}, per-task batches {s['pad_efficiency_peft_batches']}")
    if "ray_scaling" in s:
        print(f"Ray scaling (tokens/s, summed over workers): {s['ray_scaling']} on {meta['cpus']} cores"
              + (f"; Ray 1 worker vs local: {s['ray_w1_vs_local']}x" if "ray_w1_vs_local" in s else ""))
    print(f"load average {meta['load_avg_1m_start']} -> {meta['load_avg_1m_end']}, {meta['wall_s']} s in all")




def cmd_bench_e2e(args) -> int:
    run_e2e_bench(args.config, args.device, args.quick, Path(args.out), list(args.overrides or []))
    return 0
