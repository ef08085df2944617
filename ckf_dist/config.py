"""The one typed configuration of ckf_dist.

Config flows one way: dataclass defaults <- a YAML file in ``configs/`` <- ``key.sub=value``
overrides from the command line. Unknown keys and values of the wrong type are rejected with a
one-line :class:`ConfigError` naming the key and where it came from (the file or ``command
line``). Every run directory keeps its resolved config (:func:`save_config`). The DeepSpeed JSON
and the Ray scaling settings are *derived* from this schema, never written twice.

This module is import-light on purpose (no torch, ray or deepspeed): the CLI, Ray drivers and
tests import it cheaply. Each field carries its documentation as a string literal below it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import re

import yaml

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

ALL_TASKS = ("ctr", "topk", "rating", "review_rating", "explanation")


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and its source."""


@dataclass
class SyntheticConfig:
    num_users: int = 300
    """Number of synthetic users."""
    num_items: int = 200
    """Number of synthetic items."""
    latent_dim: int = 8
    """Size of the hidden user/item factors that drive ratings and review words."""
    interactions_per_user: int = 20
    """Mean interactions per user (each user gets at least 8, except the short-history share)."""
    cold_user_frac: float = 0.2
    """Share of users with only 4-7 interactions (cold after the split)."""


@dataclass
class DataConfig:
    format: Literal["movielens-100k", "movielens-1m", "amazon-json", "csv", "synthetic"] = "synthetic"
    """Input format: movielens-100k | movielens-1m | amazon-json | csv | synthetic."""
    path: Optional[str] = None
    """Dataset folder (or JSON-lines file for amazon-json); unused for synthetic."""
    meta_path: Optional[str] = None
    """Optional Amazon metadata JSON-lines file with item titles (asin, title)."""
    history_len: int = 10
    """History = the user's last `history_len` interactions strictly before the target in time that are
    known at prediction time (train rows; for valid/test rows also earlier held-out rows)."""
    split: Literal["auto", "leave_last", "global_time", "column"] = "auto"
    """leave_last: per user, the last interactions go to valid/test; global_time: one cut in time for
    everybody (fractions in `split_fractions`; later users and items are kept as 'new'); column: the
    source's `split` column; auto = column when the source has one, else leave_last."""
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """train / valid / test shares of the interactions, in time order (data.split=global_time)."""
    ctr_negatives: Literal["auto", "explicit", "sampled"] = "auto"
    """ctr rows: explicit = every labelled interaction of the split is a row, label = rating >= like_threshold
    (or the given label), no synthetic negatives (CoLLM / TALLRec); sampled = each interaction plus one
    sampled unseen item labelled No; auto = explicit when the data have ratings or labels."""
    samples_per_user: int = 0
    """Cap on training samples per user and task (0 = every eligible training interaction; valid/test are never capped)."""
    on_bad_record: Literal["error", "skip"] = "error"
    """A malformed record: stop with a one-line error, or skip it and count it."""
    topk_candidates: int = 20
    """Candidates per topk sample: the true item plus N-1 sampled negatives (20 = LLaRA / A-LLMRec's 1 + 19
    with HR@1; 100 = P5 / POD's 1 + 99 with HR@10 / NDCG@10)."""
    cold_threshold: int = 5
    """Users with at most this many training interactions are 'cold'."""
    valid_per_user: int = 1
    """Per user, the second-to-last `valid_per_user` interactions go to validation."""
    test_per_user: int = 1
    """Per user, the last `test_per_user` interactions go to test."""
    like_threshold: float = 4.0
    """Ratings >= this are positives (ctr label Yes, liked history, topk positives)."""
    review_words: int = 100
    """The review_rating prompt keeps the first `review_words` words of the review."""
    title_words: int = 4
    """Pseudo-title length (words) for Amazon items without a metadata title."""
    shard_multiple: int = 4
    """The number of shards per split is a multiple of this, so many workers each get shards."""
    samples_per_shard: int = 2000
    """Upper bound on samples written to one webdataset shard."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic generator (data.format=synthetic)."""


@dataclass
class CFConfig:
    model: Literal["mf", "lightgcn"] = "mf"
    """CF backbone whose embeddings CKF consumes: mf | lightgcn."""
    dim: int = 32
    """Embedding size of the CF backbone (reference code: 8; CoLLM: 256)."""
    loss: Literal["auto", "bpr", "mse"] = "auto"
    """MF objective: bpr (implicit), mse (explicit ratings); auto = mse when ratings exist."""
    epochs: int = 60
    """Maximum training epochs (early stopping on validation usually ends sooner)."""
    patience: int = 5
    """Early-stopping patience in epochs without validation improvement."""
    lr: float = 0.01
    """Adam learning rate."""
    batch_size: int = 1024
    """Interactions per CF training batch."""
    weight_decays: list[float] = field(default_factory=lambda: [1e-5, 1e-4, 1e-3])
    """Weight-decay grid; the value with the best validation score is kept."""
    lightgcn_layers: int = 2
    """LightGCN propagation layers."""
    baselines: list[str] = field(default_factory=lambda: ["mf", "lightgcn"])
    """CF models trained and reported as baselines beside popularity."""


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """HF-format causal LM directory; unset = the embedded tiny model from `ckf model init-tiny`."""
    cf_fusion: bool = True
    """Splice CF vectors into the prompt; false = text-only LLM + LoRA (TALLRec-style)."""
    cf_biases: bool = True
    """Feed the CF model's user / item biases (MF) as one more coordinate of its vectors."""
    mapping: Literal["ckf", "collm"] = "ckf"
    """ckf = meta-network bridge + separate projections; collm = one shared MLP mapping."""
    meta_net: bool = True
    """Use the personalized bridge W_u; false = general bridge W_g only."""
    meta_lambda: float = 0.5
    """Mix u' = e_u (lambda W_u + (1 - lambda) W_g)."""
    pooling: Literal["mean", "attention"] = "mean"
    """History pooling feeding the meta-network."""
    meta_hidden: int = 64
    """Hidden size of the 2-layer MetaNet d -> h -> d*d."""
    projection: Literal["mlp", "linear"] = "mlp"
    """Projection from the CF size to the LLM hidden size."""
    max_length: int = 256
    """Maximum tokens per sample (prompt + target); longer prompts are truncated on the left of the history."""
    placeholder_token: str = "<|cf|>"
    """Special token marking where CF vectors are spliced."""


@dataclass
class TinyLMConfig:
    vocab_size: int = 2048
    """Tokenizer vocabulary trained on the training split's text."""
    hidden_size: int = 128
    """Hidden size of the embedded LLaMA-architecture model."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    intermediate_size: int = 344
    """MLP size."""
    pretrain_steps: int = 300
    """Causal-LM pre-training steps on training-split text."""
    pretrain_batch_size: int = 16
    """Sequences per pre-training step."""
    pretrain_lr: float = 3e-3
    """Pre-training learning rate."""


@dataclass
class LoRASetConfig:
    targets: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "o_proj"])
    """Module-name suffixes wrapped by this adapter set."""
    r: int = 16
    """LoRA rank."""
    alpha: float = 64.0
    """LoRA alpha; the scale is alpha / r."""
    dropout: float = 0.1
    """Dropout on the adapter input."""


@dataclass
class LoRAConfig:
    shared: LoRASetConfig = field(default_factory=LoRASetConfig)
    """The task-shared adapter set."""
    task: LoRASetConfig = field(default_factory=lambda: LoRASetConfig(targets=["q_proj"]))
    """The task-specific adapter sets (one per task, stacked)."""
    task_specific: bool = True
    """false = the shared adapter only (one LoRA for all tasks)."""


@dataclass
class TrainConfig:
    steps: int = 200
    """Optimizer steps of CKF training."""
    micro_batch_size: int = 8
    """Samples per worker per forward/backward."""
    grad_accum: int = 1
    """Gradient-accumulation micro-steps per optimizer step."""
    lr: float = 1e-3
    """AdamW peak learning rate."""
    mapper_lr_scale: float = 1.0
    """The CF mapper's learning rate (meta-network, bridges, projections: trained from scratch) is
    train.lr times this; the adapters use train.lr."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float = 1e-3
    """AdamW weight decay."""
    warmup_frac: float = 0.05
    """Fraction of steps with linear warm-up."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warm-up."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    curriculum: bool = True
    """Text-to-CF curriculum: loss = w L_text + (1 - w) L_cf with w decaying (the CKF paper, arXiv 2410.20642)."""
    curriculum_midpoint: float = 0.5
    """Where the text weight w crosses 0.5, as a share of train.steps (reference code: 0.5); w is ~0 after
    twice that. A tiny LLM with little world knowledge gains little from the text-only twin: a short
    curriculum (e.g. 0.1) spends the budget on the CF prompts."""
    curriculum_mode: Literal["sample", "mix"] = "sample"
    """sample: each step trains one path, the text-only twin with probability w (same expected loss, half
    the cost); mix: every step runs both prompts and mixes the losses (twice the cost)."""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """auto = bf16 on GPU, fp32 on CPU."""
    log_every: int = 10
    """Steps between logged metrics."""
    eval_every: int = 0
    """Steps between validations (0 = at the end only)."""
    save_every: int = 100
    """Steps between checkpoints."""
    data_workers: int = 1
    """DataLoader worker processes per training worker (0 = collate in the training process)."""
    shuffle_buffer: int = 1000
    """Shuffle-buffer size of the streaming pipeline."""
    length_group: int = 16
    """Micro-batches pooled, sorted by prompt length and cut into batches of similar length, then
    yielded in seeded random order (mixed tasks pad less); 0 or 1 = stream order."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them (less memory,
    about a third more compute): what a 7B model at long prompts needs. Gradients are unchanged.
    The Multi-LoRA task context of the forward is replayed in the recomputation."""
    debug_checks: bool = False
    """Also check batch invariants on the device (CF id ranges, placeholder counts, task ids) in the
    model's forward; each check reads the device from the host (a stall per micro-step on a GPU).
    Off: the collator checks them once per batch on the CPU."""


@dataclass
class EvalConfig:
    batch_size: int = 16
    """Samples per evaluation batch."""
    max_new_tokens: int = 24
    """Greedy-decoding budget for generated answers."""
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    """Cut-offs for HR@k and NDCG@k."""
    max_samples_per_task: int = 0
    """Cap on test samples scored per task (0 = all); the LLM and every baseline score the same rows."""
    task_caps: dict[str, int] = field(default_factory=dict)
    """Per-task override of max_samples_per_task, e.g. {topk: 500} (topk scores every candidate)."""
    valid_max_samples_per_task: int = 300
    """Cap per task for the validations during training (train.eval_every); 0 = all."""


@dataclass
class DistConfig:
    launcher: Literal["ray", "deepspeed", "local"] = "ray"
    """ray (default) | deepspeed launcher | local (one process, no Ray)."""
    num_workers: int = 2
    """Training workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker when true."""
    cpus_per_worker: int = 1
    """CPUs reserved per Ray worker."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement of the workers: PACK fills nodes first; STRICT_SPREAD puts each worker on its own node."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage (3 default; 2 avoids all-gathering frozen weights every step)."""
    offload: Literal["none", "cpu"] = "none"
    """Optimizer/parameter offload."""
    param_persistence_threshold: int = 100000
    """ZeRO-3 `stage3_param_persistence_threshold`: smaller params are never partitioned."""
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)
    """Escape hatch merged last into the derived DeepSpeed config."""
    ray_address: Optional[str] = None
    """Ray cluster address; unset = start a local cluster on 127.0.0.1."""
    dashboard_host: str = "127.0.0.1"
    """Ray dashboard bind address."""
    storage_path: Optional[str] = None
    """Shared storage for Ray checkpoints (multi-node needs one); unset = run.dir/ray."""
    max_failures: int = 2
    """Ray FailureConfig(max_failures): worker-group restarts after a crash."""
    keep_checkpoints: int = 2
    """Registered checkpoints retained."""
    on_bad_shard: Literal["skip", "error"] = "skip"
    """A corrupted shard: skip and count it, or fail."""


@dataclass
class KernelsConfig:
    backend: Literal["auto", "torch", "triton"] = "auto"
    """auto = triton on CUDA, torch otherwise; triton fails clearly if Triton cannot run."""


@dataclass
class RunConfig:
    dir: str = "runs/quickstart"
    """Run directory: caches every stage's outputs, checkpoints and metrics."""


@dataclass
class Config:
    seed: int = 0
    """Seed for splits, sampling, initialisation and data order."""
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    """Tasks to build and train (subset of ctr, topk, rating, review_rating, explanation)."""
    task_mix: dict[str, float] = field(default_factory=dict)
    """Relative sampling weight per task in mixed batches (missing tasks weigh 1)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where outputs go."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data ingestion, splits, samples, shards."""
    cf: CFConfig = field(default_factory=CFConfig)
    """CF backbone and CF baselines."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """LLM and CF mapping."""
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    """The embedded tiny LLM (`ckf model init-tiny`)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Multi-LoRA adapter sets."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """CKF training recipe."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Distributed launch and DeepSpeed."""
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    """Kernel backend for multi_lora and meta_proj."""

    def validate(self, source: str = "config") -> "Config":
        """Cross-field checks; raises a one-line ConfigError."""
        bad = [t for t in self.tasks if t not in ALL_TASKS]
        if bad:
            raise ConfigError(f"{source}: key 'tasks': unknown task {bad[0]!r} (choose from {', '.join(ALL_TASKS)})")
        if not self.tasks:
            raise ConfigError(f"{source}: key 'tasks': at least one task is needed")
        for t in self.task_mix:
            if t not in ALL_TASKS:
                raise ConfigError(f"{source}: key 'task_mix.{t}': unknown task")
        for t, cap in self.eval.task_caps.items():
            if t not in ALL_TASKS or cap < 0:
                raise ConfigError(f"{source}: key 'eval.task_caps.{t}': unknown task or negative cap {cap!r}")
        checks = [
            ("data.history_len", self.data.history_len >= 1),
            ("data.samples_per_user", self.data.samples_per_user >= 0),
            ("data.split_fractions", len(self.data.split_fractions) == 3 and all(f >= 0 for f in self.data.split_fractions)
             and self.data.split_fractions[0] > 0 and abs(sum(self.data.split_fractions) - 1.0) < 1e-6),
            ("data.topk_candidates", self.data.topk_candidates >= 2),
            ("data.shard_multiple", self.data.shard_multiple >= 1),
            ("data.samples_per_shard", self.data.samples_per_shard >= 1),
            ("data.valid_per_user", self.data.valid_per_user >= 0),
            ("data.test_per_user", self.data.test_per_user >= 1),
            ("cf.dim", self.cf.dim >= 1),
            ("cf.weight_decays", len(self.cf.weight_decays) >= 1),
            ("model.meta_lambda", 0.0 <= self.model.meta_lambda <= 1.0),
            ("lora.shared.r", self.lora.shared.r >= 1),
            ("lora.task.r", self.lora.task.r >= 1),
            ("train.steps", self.train.steps >= 1),
            ("train.mapper_lr_scale", self.train.mapper_lr_scale > 0),
            ("train.curriculum_midpoint", 0.0 < self.train.curriculum_midpoint <= 1.0),
            ("train.micro_batch_size", self.train.micro_batch_size >= 1),
            ("train.grad_accum", self.train.grad_accum >= 1),
            ("train.data_workers", self.train.data_workers >= 0),
            ("train.shuffle_buffer", self.train.shuffle_buffer >= 0),
            ("train.length_group", self.train.length_group >= 0),
            ("dist.num_workers", self.dist.num_workers >= 1),
            ("dist.zero_stage", self.dist.zero_stage in (0, 1, 2, 3)),
        ]
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"{source}: key '{key}': invalid value {_get(self, key)!r}")
        for name in self.cf.baselines:
            if name not in ("mf", "lightgcn"):
                raise ConfigError(f"{source}: key 'cf.baselines': unknown model {name!r} (mf, lightgcn)")
        if self.data.format != "synthetic" and not self.data.path:
            raise ConfigError(f"{source}: key 'data.path': required for data.format={self.data.format}")
        return self

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none): stage caches key on it."""
        d = to_dict(self)
        if sections:
            d = {s: _get_dict(d, s) for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir)


# --------------------------------------------------------------------------------------------
# Loading, overriding, saving


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _get_dict(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    fail = ConfigError(f"{source}: key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError:
                continue
        raise fail
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: key '{key}': {value!r} is not one of {', '.join(map(str, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise fail
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        return {_coerce(k, args[0], key, source): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads `2e-4` (no dot) as a string
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise fail


def _merge(obj: Any, data: dict, prefix: str, source: str) -> None:
    """Merge a nested dict into a dataclass instance in place, strictly."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"{source}: unknown key '{key}'")
        tp = hints[k]
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            _merge(current, v, f"{key}.", source)
        else:
            setattr(obj, k, _coerce(v, tp, key, source))


def from_dict(data: dict, source: str = "config", base: Optional[Config] = None) -> Config:
    cfg = base if base is not None else Config()
    _merge(cfg, data or {}, "", source)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> (key.sub, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: key '{key}': cannot parse value {raw!r} ({str(e).splitlines()[0]})") from None
    return key, value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for text in overrides:
        key, value = parse_override(text)
        nested: dict = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        _merge(cfg, nested, "", "command line")
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- YAML file <- overrides, then validated."""
    cfg = Config()
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        from_dict(data or {}, source=str(p), base=cfg)
        source = str(p)
    apply_overrides(cfg, overrides or [])
    return cfg.validate(source if not overrides else f"{source} + command line")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(p)
    return p


def field_docs(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Map dotted key -> the docstring under that field (for `ckf config keys` and the README)."""
    import ast
    import inspect

    out: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            doc = ""
            if i + 1 < len(body) and isinstance(body[i + 1], ast.Expr) and isinstance(getattr(body[i + 1], "value", None), ast.Constant):
                doc = str(body[i + 1].value.value)  # type: ignore[attr-defined]
            tp = hints.get(name)
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                out.update(field_docs(tp, f"{prefix}{name}."))
            else:
                out[f"{prefix}{name}"] = doc
    return out
