"""The per-worker CKF training recipe: setup / train / validate / save_checkpoint / cleanup.

The same class runs in one process (`dist.launcher=local`) and in every rank under Ray Train or
the `deepspeed` launcher; it does not know which: the launcher hands it an engine factory
(:mod:`ckf_dist.train.engine`: the optimizer engine and the dtype the model is loaded in, from the
config and the device) and a checkpoint sink (:mod:`ckf_dist.train.checkpoints`). It reads what earlier stages left in the run directory
(:class:`ckf_dist.run.Run`: the split's titles, the shards, the frozen CF tables, the base LLM) and
writes its training outputs there: checkpoints (atomic), TensorBoard events + their JSON-lines
twin, the final trainable weights (+ PEFT adapters), and where each rank ran (host, pid, node).

Failure rules: a non-finite loss or gradient norm stops training before the optimizer step that
would apply it (the local engine; DeepSpeed right after its step) and before any save, with a
message naming the step (and for a loss its tasks and sample keys) and the last good checkpoint;
a config whose tasks are absent from the shards or a CF table whose ids are not the split's stops
before training starts. Checkpoints carry a sha256 manifest written last; resuming verifies it
first, and :meth:`CKFRecipe.latest_checkpoint` falls back past broken ones with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ckf_dist.config import ALL_TASKS, Config, ConfigError
from ckf_dist.data.shards import BadShardCounter, load_manifest, read_split, shard_counts
from ckf_dist.eval.loop import Evaluator
from ckf_dist.fsutil import atomic_write, atomic_write_text, verify_manifest, write_manifest
from ckf_dist.telemetry.logger import MetricsLogger, Throughput, flops_per_token, peak_flops
from ckf_dist.data.collate import batch_to
from ckf_dist.models.factory import build_ckf_model
from ckf_dist.run import Run
from ckf_dist.data.stream import TrainStream, train_loader
from ckf_dist.train.checkpoints import CheckpointSink, RunCheckpoints
from ckf_dist.train.engine import EngineFactory, LocalEngineFactory, NonFiniteStep, checkpoint_state
from ckf_dist.train.errors import TrainingError
from ckf_dist.train.export import export_peft_adapters

log = logging.getLogger(__name__)

__all__ = ["CKFRecipe", "TrainingError"]


class CKFRecipe:
    def __init__(self, run: Run | Config, rank: int = 0, world_size: int = 1, engine: Optional[EngineFactory] = None,
                 checkpoints: Optional[CheckpointSink] = None, node: Optional[str] = None):
        """What the launcher hands over: `run` (a Config means its run.dir), this rank and the world
        size, `engine` (how to build the optimizer engine and in which dtype to load the model;
        default: one process, torch AdamW), `checkpoints` (where checkpoints go; default: the run
        directory) and `node` (its name for this rank's node; default: the hostname)."""
        self.run = run if isinstance(run, Run) else Run(run)
        cfg = self.run.cfg
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.engine_factory = engine or LocalEngineFactory()
        self.checkpoints = checkpoints or RunCheckpoints(cfg.dist.keep_checkpoints)
        self.node = node
        self.tokens_total = 0.0
        """Non-pad tokens processed by all ranks since this process started (TensorBoard `perf/tokens_total`)."""
        self.step = 0
        self.device = torch.device("cuda", torch.cuda.current_device()) if (cfg.dist.use_gpu and torch.cuda.is_available()) else torch.device("cpu")

    # ------------------------------------------------------------------ setup
    def latest_checkpoint(self) -> Optional[Path]:
        """The newest intact checkpoint in the run (broken newer ones skipped with a warning)."""
        return self.run.latest_intact_checkpoint()

    def _check_inputs(self, manifest: dict, tables) -> None:
        present = set(manifest["splits"]["train"]["tasks"])
        missing = [t for t in self.cfg.tasks if t not in present]
        if missing:
            raise ConfigError(f"tasks: {missing[0]!r} is not in the shards (have {', '.join(sorted(present))}); rerun `ckf data prepare`")
        sd_meta = self.run.split_meta()
        problem = tables.id_mismatch(sd_meta["user_ids"], sd_meta["item_ids"])
        if problem is not None:
            raise ConfigError(f"cf: {self.run.cf_table()}: {problem}; rerun `ckf cf train`")

    def setup(self, resume_from: Optional[Path] = None) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        shard_dir = self.run.shards_dir
        manifest = load_manifest(shard_dir)
        dtype = self.engine_factory.model_dtype(cfg, self.device)
        built = build_ckf_model(cfg, self.run.model_dir, self.run.cf_table(), self.device, dtype, mode_path=self.run.mode_file)
        self._check_inputs(manifest, built.tables)
        self.tokenizer, self.model = built.tokenizer, built.model
        self.collator, self.eval_collator = built.collator, built.eval_collator
        self.engine = self.engine_factory(self.model, cfg, self.run, self.rank, self.world_size, self.device)
        self._record_placement()
        params = list(self.model.trainable_parameters())
        self.n_trainable = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
        self.n_frozen = sum(int(getattr(p, "ds_numel", p.numel())) for p in self.model.parameters()) - self.n_trainable
        # Outside a gather window a ZeRO-3 parameter is empty (numel 0, real shape in ds_shape) and
        # the rank keeps only its partition (ds_tensor).
        self.n_trainable_resident = sum(p.numel() for p in params)
        self.n_trainable_partition = sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel() for p in params)
        state = {}
        if resume_from is not None:
            # Nothing is loaded from a folder whose files differ from what its writer recorded.
            problem = verify_manifest(resume_from)
            if problem is not None:
                raise TrainingError(f"checkpoint {resume_from} is not intact ({problem}); not loaded")
            # Check the world size first: ZeRO shards reload only at the same data-parallel size.
            written_by = (checkpoint_state(Path(resume_from)) or {}).get("world_size")
            if written_by is not None and written_by != self.world_size:
                raise ConfigError(
                    f"dist.num_workers: checkpoint {resume_from} was written by {written_by} workers, this run has {self.world_size}"
                )
            try:
                state = self.engine.load(Path(resume_from))
            except (pickle.UnpicklingError, ValueError, KeyError, OSError) as e:  # refused or unreadable state
                raise TrainingError(f"checkpoint {resume_from}: cannot be loaded ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from e
            self.step = int(state["step"])
            log.info("rank %d: resumed from %s at step %d", self.rank, resume_from, self.step)
        self.resumed_from = self.step if resume_from is not None else None
        self.bad_shards = BadShardCounter(cfg.dist.on_bad_shard)
        workers = cfg.loader.workers
        shards_per_rank = len(manifest["splits"]["train"]["shards"]) // max(1, self.world_size)
        workers = min(workers, max(1, shards_per_rank)) if workers else 0
        counts = shard_counts(shard_dir, "train")
        self.stream = TrainStream(
            list(counts), cfg, self.collator, self.rank, self.world_size, workers,
            skip=self.step * cfg.train.grad_accum, bad_shards=self.bad_shards, expected=counts,
        )
        self.loader = train_loader(self.stream)
        self.logger = MetricsLogger(self.run.tb_dir, self.rank, jsonl=self.run.train_log)
        self.logger.log(self.step, {"model/trainable_params": self.n_trainable, "model/frozen_params": self.n_frozen,
                                    "model/trainable_params_resident_rank0": self.n_trainable_resident,
                                    "model/trainable_params_partition_rank0": self.n_trainable_partition, "dist/world_size": self.world_size,
                                    **({"train/resumed_from_step": self.resumed_from} if self.resumed_from is not None else {})})

    def _record_placement(self) -> None:
        """Rank 0 writes `ranks.json`: every rank's host, pid and node (gathered as JSON bytes)."""
        me = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "node": self.node or socket.gethostname()}
        ranks = [me]
        if self.world_size > 1 and torch.distributed.is_initialized():
            raw = json.dumps(me).encode()[:1024]
            buf = torch.zeros(1024, dtype=torch.uint8)
            buf[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            bufs = [torch.zeros_like(buf) for _ in range(self.world_size)]
            torch.distributed.all_gather(bufs, buf)
            ranks = [json.loads(bytes(b.tolist()).rstrip(b"\0")) for b in bufs]
        if self.rank == 0:
            atomic_write_text(self.run.ranks_file, json.dumps(ranks, indent=1))
            nodes = len({r["node"] for r in ranks})
            log.info("%d ranks on %d node(s): %s", len(ranks), nodes, ", ".join(f"{r['rank']}@{r['host']}/{r['node'][:12]}" for r in ranks))

    # ------------------------------------------------------------------ train
    def _all_reduce(self, values: list[float]) -> list[float]:
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def train(self, stop_at: Optional[int] = None) -> dict:
        """Train to `train.steps`; `stop_at` ends early after that step (checkpointed), with the
        schedule unchanged, as an interrupted run would.

        A micro-step reads nothing from the device: the loss and the per-task losses stay there
        and are read at `train.log_every` steps (and before a validation or a checkpoint), where a
        non-finite loss stops training naming its step, tasks and samples."""
        cfg = self.cfg
        total = cfg.train.steps
        self.model.train()
        meter = Throughput()
        it = iter(self.loader)
        bar = tqdm(total=total, initial=self.step, desc="train", disable=self.rank != 0 or None, dynamic_ncols=True)
        self._window: list[tuple[int, torch.Tensor, list, list]] = []
        self._norms: list[tuple[int, object]] = []  # (step, grad norm as the engine returned it), read with the losses
        self._task_sum = torch.zeros(len(ALL_TASKS), dtype=torch.float64, device=self.device)
        self._task_n = [0] * len(ALL_TASKS)
        last: dict = {}
        peak_mem = 0.0
        end = min(total, stop_at) if stop_at is not None else total
        started = (time.perf_counter(), self.step)
        while self.step < end:
            tokens, samples, wait_s, compute_s = 0, 0, 0.0, 0.0
            for _ in range(cfg.train.grad_accum):
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    raise TrainingError(f"rank {self.rank}: the training stream ran dry at step {self.step} (no readable shard)") from None
                t1 = time.perf_counter()
                bad_count = batch.pop("bad_shards", 0)
                n_tokens, n_samples = self._micro_step(batch, total)
                compute_s += time.perf_counter() - t1
                wait_s += t1 - t0
                tokens += n_tokens
                samples += n_samples
            t2 = time.perf_counter()
            try:
                grad_norm = self.engine.step()
                stop = isinstance(grad_norm, float) and not math.isfinite(grad_norm)  # DeepSpeed: a host float
            except NonFiniteStep as e:  # the local engine did not apply it
                grad_norm, stop = e.norm, True
            if grad_norm is not None:  # checked with the losses: a NaN update must never reach a checkpoint
                self._norms.append((self.step, grad_norm))
            if stop:
                self._check_finite()  # raises, naming the loss (tasks, samples) or the gradient norm
            compute_s += time.perf_counter() - t2
            self.step += 1
            meter.add(tokens, samples, wait_s, compute_s)
            if self.device.type == "cuda":
                peak_mem = max(peak_mem, torch.cuda.max_memory_allocated() / 2**30)
            bar.update(1)
            if self.step % cfg.train.log_every == 0 or self.step == total:
                loss = self._check_finite()
                bar.set_postfix(loss=f"{loss:.3f}")
                last = self._log(meter, loss, grad_norm, peak_mem, bad_count)
                if self.rank == 0 and bar.disable:
                    self._progress_line(last, started, total)
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < total:
                self._check_finite()
                self.validate("valid")
            if self.step % cfg.train.save_every == 0 or self.step == end:
                self._check_finite()
                self.save_checkpoint(last)
        bar.close()
        if self.step == total:
            self.export()
        return last

    def _micro_step(self, batch: dict, total: int) -> tuple[int, int]:
        """Forward and backward of one micro-batch -> (tokens of the paths it ran, samples). No
        device-to-host read: token counts come from the collator, losses stay on the device."""
        batch = batch_to(batch, self.device)
        out = self.model(batch, step=self.step, total_steps=total)
        # the paths this step actually ran (curriculum_mode=sample runs one of the two)
        tokens = (batch["num_tokens"] if out.cf_loss is not None else 0) + (batch.get("text_num_tokens", 0) if out.text_loss is not None else 0)
        self.engine.backward(out.loss)
        self._window.append((self.step, out.loss.detach(), batch["tasks"], batch["keys"][:3]))
        for k, v in out.task_losses.items():
            i = ALL_TASKS.index(k)
            self._task_sum[i] += v.detach().double()
            self._task_n[i] += 1
        return tokens, len(batch["keys"])

    def _check_finite(self) -> float:
        """Read the micro-step losses and gradient norms since the last check (device-to-host reads
        here only); a non-finite one stops training before anything is saved. Returns the mean loss
        of the last step (nan if none)."""
        empty = not self._window
        if empty and not self._norms:
            return float("nan")  # nothing new to read
        if empty:  # no new loss: only the gradient norms to read
            self._window.append((self.step, torch.zeros(()), [], []))
        values = torch.stack([w[1].float() for w in self._window]).tolist()
        for (step, _, tasks, keys), v in zip(self._window, values):
            if not math.isfinite(v):
                first = self._window[0][0]
                raise TrainingError(
                    f"non-finite loss at step {step} (tasks {sorted(set(tasks))}, samples {keys}...; found at step {self.step}, "
                    f"losses read since step {first}); last good checkpoint: {self.latest_checkpoint()}"
                )
        if self._norms:  # after the losses: a non-finite loss names its tasks and samples
            norms = torch.stack([torch.as_tensor(n, dtype=torch.float32).reshape(()) for _, n in self._norms]).tolist()
            for (step, _), v in zip(self._norms, norms):
                if not math.isfinite(v):
                    raise TrainingError(f"non-finite gradient norm at step {step} (found at step {self.step}); the update "
                                        f"was not saved; last good checkpoint: {self.latest_checkpoint()}")
            self._norms.clear()
        last = [v for (step, *_), v in zip(self._window, values) if step == self._window[-1][0]]
        self._window.clear()
        return float("nan") if empty else sum(last) / self.cfg.train.grad_accum

    def _progress_line(self, scalars: dict, started: tuple[float, int], total: int) -> None:
        """One progress line (step, loss, samples/s, tokens/s, ETA) where no progress bar is drawn
        (output not a terminal: log files, `ray job logs`, CI)."""
        t0, step0 = started
        elapsed = time.perf_counter() - t0
        done = self.step - step0
        eta = elapsed / done * (total - self.step) if done else float("nan")
        print(f"train step {self.step}/{total}  loss {scalars.get('train/loss', float('nan')):.4f}  "
              f"samples/s {scalars.get('perf/samples_per_s', 0.0):.1f}  tokens/s {scalars.get('perf/tokens_per_s', 0.0):.0f}  "
              f"elapsed {elapsed / 60:.1f} min  ETA {eta / 60:.1f} min", flush=True)

    def _log(self, meter, loss, grad_norm, peak_mem, bad_shards) -> dict:
        rates = meter.report(self.world_size)
        # Sum token/sample counts over ranks; the cluster's rates are those sums over this rank's
        # window (the ranks' windows end at the same collective, so they differ by scheduling only).
        keys = ["perf/tokens", "perf/samples"]
        summed = self._all_reduce([rates[k] for k in keys] + [loss, float(bad_shards)])
        for k, v in zip(keys, summed):
            rates[k] = v
        rates["perf/tokens_per_s"] = rates["perf/tokens"] / rates["perf/window_s"]
        rates["perf/samples_per_s"] = rates["perf/samples"] / rates["perf/window_s"]
        rates["perf/tokens_per_s_per_worker"] = rates["perf/tokens_per_s"] / self.world_size
        self.tokens_total += rates["perf/tokens"]
        rates["perf/tokens_total"] = self.tokens_total
        scalars = {**rates, "train/loss": summed[len(keys)] / self.world_size, "train/lr": self.engine.lr, "data/bad_shards": summed[-1]}
        grad_norm = float(grad_norm) if grad_norm is not None else None
        if grad_norm is not None and math.isfinite(grad_norm):
            scalars["train/grad_norm"] = grad_norm
        means = self._all_reduce(self._task_sum.tolist() + [float(n) for n in self._task_n])
        self._task_sum.zero_()
        self._task_n = [0] * len(ALL_TASKS)
        for i, t in enumerate(ALL_TASKS):
            if means[len(ALL_TASKS) + i] > 0:
                scalars[f"train/{t}/loss"] = means[i] / means[len(ALL_TASKS) + i]
        if self.device.type == "cuda":
            peak = peak_flops(torch.cuda.get_device_name())
            conf = self.model.llm.config
            if peak:
                seq = self.cfg.model.max_length
                n = self.n_frozen + self.n_trainable
                scalars["perf/mfu"] = rates["perf/tokens_per_s_per_worker"] * flops_per_token(n, conf.num_hidden_layers, conf.hidden_size, seq) / peak
                scalars["perf/mfu_6n"] = rates["perf/tokens_per_s_per_worker"] * flops_per_token(n, conf.num_hidden_layers, conf.hidden_size, seq, False) / peak
            scalars["mem/peak_gib"] = peak_mem
        self.logger.log(self.step, scalars)
        return scalars

    # ------------------------------------------------------------------ validate
    def evaluator(self):
        return Evaluator(self.model, self.eval_collator, self.cfg, self.run.item_titles(), self.device,
                         self.run.rating_scale())

    def validate(self, split: str = "valid") -> dict:
        """Evaluate on rank 0 (others wait); logs `eval/<task>/<metric>`."""
        metrics: dict = {}
        if self.rank == 0:
            samples = [s for s in read_split(self.run.shards_dir, split) if s["task"] in self.cfg.tasks]
            metrics = self.evaluator().evaluate(samples, during_training=True)
            flat = {f"eval/{t}/{k}": v for t, m in metrics.items() for k, v in m.items() if isinstance(v, (int, float)) and v is not None and k != "n"}
            self.logger.log(self.step, flat)
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return metrics

    # ------------------------------------------------------------------ save / export
    def save_checkpoint(self, metrics: Optional[dict] = None) -> Path:
        t0 = time.perf_counter()
        folder = self.checkpoints.folder(self.run, self.step)
        state = {"step": self.step, "world_size": self.world_size, "seed": self.cfg.seed, "samples_skipped": self.step * self.cfg.train.grad_accum}
        self.engine.save(folder, state)
        self.checkpoints.seal(folder, self.rank, self.world_size)  # the sha256 manifest, written last
        self.logger.log(self.step, {"ckpt/save_s": time.perf_counter() - t0})
        self.checkpoints.commit(self.run, folder, self.step, metrics or {}, self.rank)
        return folder

    def export(self) -> Optional[Path]:
        """Final trainable weights (adapters, meta-network, projections) as safetensors, gathered on rank 0."""
        final = self.run.final_dir
        gathered = self.engine.gather_trainable(dict(self.model.trainable_named_parameters()))
        if self.rank != 0:
            return None
        atomic_write(self.run.final_weights, lambda tmp: save_file({k: v.contiguous() for k, v in gathered.items()}, str(tmp),
                                                                   metadata={"step": str(self.step)}))
        if self.model.has_static_adapters:  # a frozen LLM (A-LLMRec, CoRA) has no LoRA to export
            export_peft_adapters(gathered, self.cfg, self.run.peft_dir, self.run.model_dir)
        write_manifest(final)  # last: `ckf eval` / `recommend` verify the weights against it
        return final

    def cleanup(self) -> None:
        if hasattr(self, "logger"):
            self.logger.close()

