"""The sections of :class:`ckf_dist.config.Config`: one dataclass per section, each field with its
documentation as a string literal below it, and each section's own checks (`problems()`) beside
its fields. Import-light (no torch): loaded with :mod:`ckf_dist.config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

ALL_TASKS = ("ctr", "topk", "rating", "review_rating", "explanation")


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and its source."""


def _pos(x: float) -> bool:
    """A finite number > 0 (rejects NaN and infinities, which pass a plain comparison or fail it silently)."""
    return math.isfinite(x) and x > 0


def _nonneg(x: float) -> bool:
    return math.isfinite(x) and x >= 0


def _invalid(checks: list[tuple[str, bool, Any]]) -> list[tuple[str, str]]:
    """(key, "invalid value ...") for each (key, ok, value) that is not ok."""
    return [(key, f"invalid value {value!r}") for key, ok, value in checks if not ok]


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
    format: Literal["movielens-100k", "movielens-1m", "movielens-latest", "amazon-json", "csv", "parquet",
                    "synthetic"] = "synthetic"
    """Input format: movielens-100k | movielens-1m | movielens-latest (ml-latest-small, ml-25m, ml-32m:
    ratings.csv + movies.csv, half stars) | amazon-json | csv | parquet (the csv columns in
    interactions.parquet + items.parquet, for large exports) | synthetic."""
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
    rating_scale: Optional[list[float]] = None
    """[lo, hi, step] of the ratings (e.g. [0.5, 5, 0.5] for half stars); null = from the data (the
    format's scale, or the observed ratings for csv). Rating answers are the nearest level."""
    review_words: int = 100
    """The review_rating prompt keeps the first `review_words` words of the review."""
    title_words: int = 4
    """Pseudo-title length (words) for Amazon items without a metadata title."""
    title_description: bool = False
    """Name each item "title, description" (MovieLens: its genres) wherever prompts, answers and
    outputs name it, instead of the title alone: the item knowledge a pre-trained LLM brings to a
    title, spelled out for an LLM that has none."""
    item_rating_stats: bool = False
    """ctr and rating prompts state the target item's mean training rating and how many ratings it
    has ("the item titled "X" (average rating 4.3 from 12 ratings)"): the item side of a rating
    model's bias, spelled out as text. Training split only; a training row's own rating is left
    out of its item's numbers, so training rows read what a held-out row reads."""
    features_first: bool = False
    """One-item prompts (ctr, rating, review_rating, explanation) state the target item's encoded
    feature at the prompt's start, beside the user's ("The user's preferences are encoded in <u>.
    The item's feature is encoded in <i>. ..."), instead of after its title near the question.
    topk's candidates keep their features after their titles. The text-only twin is unchanged."""
    shard_multiple: int = 4
    """The number of shards per split is a multiple of this, so many workers each get shards."""
    samples_per_shard: int = 2000
    """Upper bound on samples written to one webdataset shard."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic generator (data.format=synthetic)."""
    engine: Literal["local", "ray"] = "local"
    """Where `ckf data prepare` runs: local = this process; ray = Ray Data tasks on the cluster of
    dist.ray_address / RAY_ADDRESS (else a local Ray on 127.0.0.1). Both write the same shards."""
    workers: int = 0
    """Preparation tasks run at once (ray: 0 = one per CPU of the cluster; local: always one)."""
    block_mb: float = 32.0
    """Input megabytes per read task, which also sizes the blocks of users later stages process
    (the memory of one task); the output does not depend on it."""

    def problems(self) -> list[tuple[str, str]]:
        """(key, what is wrong) for each invalid field of this section."""
        out = _invalid([
            ("history_len", self.history_len >= 1, self.history_len),
            ("samples_per_user", self.samples_per_user >= 0, self.samples_per_user),
            ("split_fractions", len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
             and self.split_fractions[0] > 0 and abs(sum(self.split_fractions) - 1.0) < 1e-6, self.split_fractions),
            ("topk_candidates", self.topk_candidates >= 2, self.topk_candidates),
            ("shard_multiple", self.shard_multiple >= 1, self.shard_multiple),
            ("samples_per_shard", self.samples_per_shard >= 1, self.samples_per_shard),
            ("valid_per_user", self.valid_per_user >= 0, self.valid_per_user),
            ("workers", self.workers >= 0, self.workers),
            ("block_mb", math.isfinite(self.block_mb) and self.block_mb > 0, self.block_mb),
            ("test_per_user", self.test_per_user >= 1, self.test_per_user),
        ])
        if self.rating_scale is not None:
            from ckf_dist.rating_scale import RatingScale, RatingScaleError

            try:
                if len(self.rating_scale) != 3:
                    raise RatingScaleError(f"expected [lo, hi, step], got {self.rating_scale!r}")
                RatingScale(*(float(v) for v in self.rating_scale))
            except (RatingScaleError, TypeError, ValueError) as e:
                out.append(("rating_scale", str(e)))
        if self.format != "synthetic" and not self.path:
            out.append(("path", f"required for data.format={self.format}"))
        return out


CF_MODELS = ("mf", "lightgcn", "sasrec", "din")
SEQUENTIAL_CF = ("sasrec", "din")
"""CF backbones whose user vector is an encoding of the row's history."""


@dataclass
class CFConfig:
    model: Literal["mf", "lightgcn", "sasrec", "din"] = "mf"
    """CF backbone, the CF source of every mode: mf | lightgcn | sasrec | din. A sequential backbone (SASRec,
    DIN) has no user table: a row's user vector is its encoding of the row's history."""
    dim: int = 32
    """Embedding size of the CF backbone (reference code: 8; CoLLM: 256)."""
    loss: Literal["auto", "bpr", "mse"] = "auto"
    """MF objective: bpr (implicit), mse (explicit ratings); auto = mse when ratings exist. (LightGCN trains
    BPR; SASRec and DIN binary cross-entropy on labelled interactions and sampled negatives.)"""
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
    sasrec_blocks: int = 2
    """SASRec self-attention blocks (its paper: 2)."""
    sasrec_heads: int = 1
    """SASRec attention heads (its paper: 1); must divide cf.dim."""
    seq_dropout: float = 0.2
    """Dropout of SASRec and DIN while they train (SASRec's paper: 0.2 on MovieLens)."""
    baselines: list[str] = field(default_factory=lambda: ["mf", "lightgcn"])
    """CF models trained and reported as baselines beside popularity: mf | lightgcn | sasrec | din."""
    fold_in_ridge: float = 10.0
    """Ridge penalty of the rating-aware fold-in of a user without a trained row (MF with biases: a
    bias and a vector fitted to the ratings of the row's history; see ckf_dist.cf.foldin). Larger
    pulls a short history's user towards the average user."""
    cross_fit: int = 0
    """Out-of-fold CF vectors for the LLM's training rows: K >= 2 folds of the training interactions,
    K more fits of the backbone (mf, lightgcn), each without one fold; a training row reads the fit
    that did not see its own interaction, evaluation the fit on all of them. 0 = off: training rows
    read CF vectors fit on their own labels (in-sample; see ckf_dist.data.folds)."""

    def problems(self) -> list[tuple[str, str]]:
        out = _invalid([("dim", self.dim >= 1, self.dim),
                        ("weight_decays", len(self.weight_decays) >= 1 and all(_nonneg(w) for w in self.weight_decays), self.weight_decays),
                        ("epochs", self.epochs >= 1, self.epochs), ("patience", self.patience >= 1, self.patience),
                        ("lr", _pos(self.lr), self.lr), ("batch_size", self.batch_size >= 1, self.batch_size),
                        ("lightgcn_layers", self.lightgcn_layers >= 1, self.lightgcn_layers),
                        ("sasrec_blocks", self.sasrec_blocks >= 1, self.sasrec_blocks),
                        ("sasrec_heads", self.sasrec_heads >= 1 and self.dim % max(1, self.sasrec_heads) == 0, self.sasrec_heads),
                        ("seq_dropout", math.isfinite(self.seq_dropout) and 0.0 <= self.seq_dropout < 1.0, self.seq_dropout),
                        ("fold_in_ridge", math.isfinite(self.fold_in_ridge) and self.fold_in_ridge > 0, self.fold_in_ridge),
                        ("cross_fit", self.cross_fit == 0 or self.cross_fit >= 2, self.cross_fit)])
        if self.cross_fit and self.model in SEQUENTIAL_CF:
            out.append(("cross_fit", f"{self.model} encodes histories and has no tables to cross-fit (cf.model: mf, lightgcn)"))
        out += [("baselines", f"unknown model {n!r} (mf, lightgcn, sasrec, din)") for n in self.baselines
                if n not in CF_MODELS][:1]
        return out


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """HF-format causal LM directory; unset = the embedded tiny model from `ckf model init-tiny`."""
    cf_fusion: bool = True
    """Splice CF vectors into the prompt; false = text-only LLM + LoRA (TALLRec-style)."""
    cf_biases: bool = True
    """Feed the CF model's user / item biases (MF) as one more coordinate of its vectors."""
    mapping: Literal["ckf", "collm", "binllm", "cora", "allmrec"] = "ckf"
    """How collaborative knowledge reaches the LLM: ckf = meta-network bridge + separate projections (soft
    tokens, Multi-LoRA); collm = one shared MLP mapping (soft tokens, one LoRA; CoLLM); binllm = binary codes
    of the CF vectors written into the prompt as text (one LoRA; BinLLM); cora = text-only prompt, a per-row
    LoRA delta generated from the CF vectors (frozen LLM; CoRA); allmrec = CF items aligned with the LLM's
    text embeddings in a first stage, then projected as soft tokens (frozen LLM; A-LLMRec)."""
    meta_net: bool = True
    """Use the personalized bridge W_u; false = general bridge W_g only."""
    meta_lambda: float = 0.5
    """Mix u' = e_u (lambda W_u + (1 - lambda) W_g)."""
    pooling: Literal["mean", "attention"] = "mean"
    """History pooling feeding the meta-network."""
    meta_hidden: int = 64
    """Hidden size of the 2-layer MetaNet d -> h -> d*d (mapping=ckf) and of CoRA's query generator (mapping=cora)."""
    projection: Literal["mlp", "linear"] = "mlp"
    """Projection from the CF size to the LLM hidden size."""
    token_norm: Literal["row", "table"] = "row"
    """Norm of a soft token: row = every token at the LLM's mean token-embedding norm; table = that norm times
    the CF vector's own length over the mean length of its table's rows (keeps what a vector's length says
    in a dot-product CF model). See :mod:`ckf_dist.modules.meta_net`."""
    max_length: int = 256
    """Maximum tokens per sample (prompt + target); longer prompts are truncated on the left of the history."""
    placeholder_token: str = "<|cf|>"
    """Special token marking where CF vectors are spliced."""
    binllm_bits: int = 32
    """mapping=binllm: bits of each binary code (BinLLM: 32, its CF embedding size)."""
    binllm_compress: bool = False
    """mapping=binllm: write each code in dot-decimal notation (every 8 bits as one number 0-255, joined by
    dots, like an IPv4 address) instead of the bit string; BinLLM's shorter variant (its default: off)."""
    allmrec_dim: int = 128
    """mapping=allmrec: size of the joint collaborative-text item space of the alignment stage (A-LLMRec: 128)."""
    align_epochs: int = 10
    """mapping=allmrec: epochs of the alignment stage over the training interactions (A-LLMRec stage 1)."""

    def prompt_kind(self) -> str:
        """Which prompt the main path reads: "cf" (placeholders take soft tokens), "codes" (placeholders are
        replaced by the binary codes as text) or "text" (the text-only twin)."""
        if not self.cf_fusion or self.mapping == "cora":
            return "text"
        return "codes" if self.mapping == "binllm" else "cf"

    def adapter_kind(self) -> str:
        """The LLM's adapters: "multi" (lora.*, shared + per-task sets), "shared" (one LoRA on the union of
        the targets: CoLLM, BinLLM), "row" (a generated per-row adapter on the union: CoRA) or "none" (frozen
        LLM: A-LLMRec)."""
        return {"collm": "shared", "binllm": "shared", "cora": "row", "allmrec": "none"}.get(self.mapping, "multi")

    def needs_mode_stage(self) -> bool:
        """Whether training reads the output of the mode stage (BinLLM's codes, A-LLMRec's alignment)."""
        return self.cf_fusion and self.mapping in ("binllm", "allmrec")

    def problems(self) -> list[tuple[str, str]]:
        out = _invalid([("meta_lambda", 0.0 <= self.meta_lambda <= 1.0, self.meta_lambda),
                        ("meta_hidden", self.meta_hidden >= 1, self.meta_hidden),
                        ("max_length", self.max_length >= MIN_MAX_LENGTH, self.max_length),
                        ("placeholder_token", bool(self.placeholder_token.strip()), self.placeholder_token),
                        ("binllm_bits", self.binllm_bits >= 1, self.binllm_bits),
                        ("allmrec_dim", self.allmrec_dim >= 1, self.allmrec_dim),
                        ("align_epochs", self.align_epochs >= 1, self.align_epochs)])
        if not self.cf_fusion and self.mapping not in ("ckf", "collm"):
            out.append(("cf_fusion", f"false is the text-only baseline, which has no {self.mapping} mapping "
                                     "(use model.mapping=ckf)"))
        return out


MIN_MAX_LENGTH = 32
"""No prompt template fits in fewer tokens: a smaller model.max_length fails before any stage runs."""


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
    prompt_texts: int = 4000
    """Training prompts (text-only twins) added to the pre-training corpus, each followed by an answer
    drawn uniformly from its task's answers (Yes/No, rating levels, a candidate title): like a real
    LLM, the embedded one then knows the language and answer format of its prompts, but no labels.
    Without them the answer tokens keep near-random embeddings, which the frozen LM head cannot
    sharpen on. 0 = only the training split's titles, reviews and summaries."""

    def problems(self) -> list[tuple[str, str]]:
        return _invalid([("vocab_size", self.vocab_size >= 64, self.vocab_size),
                         ("hidden_size", self.hidden_size >= 1 and self.hidden_size % max(1, self.num_heads) == 0, self.hidden_size),
                         ("num_layers", self.num_layers >= 1, self.num_layers), ("num_heads", self.num_heads >= 1, self.num_heads),
                         ("intermediate_size", self.intermediate_size >= 1, self.intermediate_size),
                         ("pretrain_steps", self.pretrain_steps >= 0, self.pretrain_steps),
                         ("pretrain_batch_size", self.pretrain_batch_size >= 1, self.pretrain_batch_size),
                         ("pretrain_lr", _pos(self.pretrain_lr), self.pretrain_lr),
                         ("prompt_texts", self.prompt_texts >= 0, self.prompt_texts)])


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

    def problems(self) -> list[tuple[str, str]]:
        out = []
        for name, ls in (("shared", self.shared), ("task", self.task)):
            out += _invalid([(f"{name}.r", ls.r >= 1, ls.r), (f"{name}.alpha", _pos(ls.alpha), ls.alpha),
                             (f"{name}.dropout", math.isfinite(ls.dropout) and 0.0 <= ls.dropout < 1.0, ls.dropout)])
        return out


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
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them (less memory,
    about a third more compute): what a 7B model at long prompts needs. Gradients are unchanged.
    The Multi-LoRA task context of the forward is replayed in the recomputation."""
    user_fold_in_rate: float = 0.0
    """Share of training rows whose CF user vector is folded in from the row's history (the rule of
    cf.fold_in_ridge) instead of read from the user's trained CF row. A trained row was fit on the
    very interaction being predicted, while at test time a user without one (the `new` group of a
    global time split) gets the fold-in: training on both teaches the LLM how far each can be
    trusted. Like dropout, drawn per row at each step; evaluation always uses the trained row."""
    user_token_dropout: float = 0.0
    """Share of training rows whose CF user vector is zeroed (after any fold-in), so their user
    token says nothing about the user and the answer has to come from the item's token and the text.
    Why: the LLM learns to read one CF token at a time (on Amazon MI the user's first; the item's
    bias, half of MF's ranking there, only after many more steps); rows without the user's token
    make it learn the item's from the start. Drawn per row at each step; evaluation never drops."""
    item_first_until: float = 0.0
    """Fraction of train.steps during which every training row's CF user vector is zeroed
    (user_token_dropout at 1), after which train.user_token_dropout applies: the LLM learns to read
    the item's token before the user's becomes informative. 0 = off."""
    debug_checks: bool = False
    """Also check batch invariants on the device (CF id ranges, placeholder counts, task ids) in the
    model's forward; each check reads the device from the host (a stall per micro-step on a GPU).
    Off: the collator checks them once per batch on the CPU."""

    def problems(self) -> list[tuple[str, str]]:
        return _invalid([
            ("steps", self.steps >= 1, self.steps),
            ("lr", _pos(self.lr), self.lr),
            ("eps", _pos(self.eps), self.eps),
            ("weight_decay", _nonneg(self.weight_decay), self.weight_decay),
            ("warmup_frac", math.isfinite(self.warmup_frac) and 0.0 <= self.warmup_frac < 1.0, self.warmup_frac),
            ("grad_clip", _nonneg(self.grad_clip), self.grad_clip),
            ("log_every", self.log_every >= 1, self.log_every),
            ("eval_every", self.eval_every >= 0, self.eval_every),
            ("save_every", self.save_every >= 1, self.save_every),
            ("mapper_lr_scale", _pos(self.mapper_lr_scale), self.mapper_lr_scale),
            ("curriculum_midpoint", 0.0 < self.curriculum_midpoint <= 1.0, self.curriculum_midpoint),
            ("user_fold_in_rate", math.isfinite(self.user_fold_in_rate) and 0.0 <= self.user_fold_in_rate <= 1.0,
             self.user_fold_in_rate),
            ("user_token_dropout", math.isfinite(self.user_token_dropout) and 0.0 <= self.user_token_dropout < 1.0,
             self.user_token_dropout),
            ("item_first_until", math.isfinite(self.item_first_until) and 0.0 <= self.item_first_until < 1.0,
             self.item_first_until),
            ("micro_batch_size", self.micro_batch_size >= 1, self.micro_batch_size),
            ("grad_accum", self.grad_accum >= 1, self.grad_accum),
        ])


@dataclass
class LoaderConfig:
    """The DataLoader of the training stream, per training worker."""

    workers: int = 1
    """DataLoader worker processes per training worker (0 = collate in the training process)."""
    shuffle_buffer: int = 1000
    """Shuffle-buffer size of the streaming pipeline."""
    length_group: int = 16
    """Micro-batches pooled, sorted by prompt length and cut into batches of similar length, then
    yielded in seeded random order (mixed tasks pad less); 0 or 1 = stream order."""

    def problems(self) -> list[tuple[str, str]]:
        return _invalid([("workers", self.workers >= 0, self.workers),
                         ("shuffle_buffer", self.shuffle_buffer >= 0, self.shuffle_buffer),
                         ("length_group", self.length_group >= 0, self.length_group)])


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
    candidate_length_power: float = 0.25
    """topk (and `ckf recommend`'s re-ranking) scores a candidate by its answer's total
    log-probability (title tokens and EOS) divided by n ** power, n its token count: 1 = the mean
    per token, 0 = the sum, which favours short titles. 0.25 ranked best on MovieLens-100K's valid
    rows (`benchmarks/topk_scoring_probe.py`)."""

    def problems(self) -> list[tuple[str, str]]:
        out = _invalid([("batch_size", self.batch_size >= 1, self.batch_size),
                        ("max_new_tokens", self.max_new_tokens >= 1, self.max_new_tokens),
                        ("ks", len(self.ks) >= 1 and all(k >= 1 for k in self.ks), self.ks),
                        ("max_samples_per_task", self.max_samples_per_task >= 0, self.max_samples_per_task),
                        ("valid_max_samples_per_task", self.valid_max_samples_per_task >= 0, self.valid_max_samples_per_task),
                        ("candidate_length_power", math.isfinite(self.candidate_length_power)
                         and 0.0 <= self.candidate_length_power <= 1.0, self.candidate_length_power)])
        return out + [(f"task_caps.{t}", f"unknown task or negative cap {cap!r}") for t, cap in self.task_caps.items()
                      if t not in ALL_TASKS or cap < 0][:1]


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
    """Ray dashboard bind address (a local cluster's; anything but loopback exposes the dashboard and
    its job-submission API, which runs code, to the network: a warning says so)."""
    storage_path: Optional[str] = None
    """Shared storage for Ray checkpoints (multi-node needs one); unset = run.dir/ray."""
    max_failures: int = 2
    """Ray FailureConfig(max_failures): worker-group restarts after a crash."""
    keep_checkpoints: int = 2
    """Registered checkpoints retained."""
    on_bad_shard: Literal["skip", "error"] = "skip"
    """A corrupted shard: skip and count it, or fail."""

    def problems(self) -> list[tuple[str, str]]:
        return _invalid([("num_workers", self.num_workers >= 1, self.num_workers),
                         ("zero_stage", self.zero_stage in (0, 1, 2, 3), self.zero_stage)])

    def exposure(self) -> Optional[str]:
        """A warning when a local Ray cluster would listen beyond loopback (None when it would not)."""
        import ipaddress

        if self.launcher != "ray" or self.ray_address:
            return None
        host = self.dashboard_host.strip()
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return None
        return (f"dist.dashboard_host={host} is not a loopback address: the Ray dashboard and its job-submission "
                "API (which runs arbitrary code) will accept connections from the network on port 8265")


@dataclass
class KernelsConfig:
    backend: Literal["auto", "torch", "triton"] = "auto"
    """auto = triton on CUDA, torch otherwise; triton fails clearly if Triton cannot run."""


@dataclass
class RunConfig:
    dir: str = "runs/quickstart"
    """Run directory: caches every stage's outputs, checkpoints and metrics."""
    cache_dir: str = ""
    """Folder shared by runs for what does not depend on the run itself: the CF tables (cf stage)
    and the embedded LLM's pre-training (llm stage). A run whose stage has the same key and inputs
    as one already there copies it instead of building it again. Empty = off; `ckf sweep` sets
    <out>/cache for its trials."""
