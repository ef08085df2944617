"""The CKF model: CF vectors spliced into the prompt of a frozen causal LLM with Multi-LoRA.

Owns: input embeddings with mapped CF vectors at the placeholder positions (every row: the
first placeholder takes the row's mapped user vector, the later ones its items' vectors in
order), the causal-LM loss on target tokens with per-task means, the text-to-CF curriculum, and
the evaluation helpers (answer logits, sequence log-probabilities, greedy generation with a KV
cache). Must not know: data files, the optimizer, DeepSpeed, Ray (``train/`` wraps this module).

Batches come from :class:`ckf_dist.data.collate.Collator` (field list there). Per LLM call
the row task ids reach the Multi-LoRA layers through ``self.ctx`` (see
:mod:`ckf_dist.modules.multi_lora`).

Trainable: Multi-LoRA adapters (``llm.*.lora_*``) and the CF mapper (``mapper.*``: meta-network,
general bridge, projections). Frozen: every LLM weight; the CF tables are non-persistent
buffers (never saved with the trainable state, never trained).

Modes (``model.mapping``, :meth:`ModelConfig.prompt_kind` / :meth:`ModelConfig.adapter_kind`):
``ckf`` soft tokens and Multi-LoRA; ``collm`` soft tokens from one shared MLP and one shared LoRA
(no task adapters), as in CoLLM; ``binllm`` no soft token at all (the collator writes the binary
codes of the CF vectors into the prompt as text) and one shared LoRA, as in BinLLM; ``cora`` a
text-only prompt and a frozen LLM whose projections get a per-row LoRA generated from the row's
CF vectors (:mod:`ckf_dist.modules.cora`; the generator is ``mapper``), as in CoRA; ``allmrec``
soft tokens from the user vector and the stage-1 aligned item vectors (``item_tokens``) through
two MLPs, frozen LLM, as in A-LLMRec. Per LLM call the adapters are selected by
:meth:`_adapters` (task ids per row, or the rows' generated adapters).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ckf_dist.cf.foldin import fold_in
from ckf_dist.config import ALL_TASKS, Config
from ckf_dist.fsutil import atomic_write
from ckf_dist.kernels.multi_lora import resolve_backend
from ckf_dist.modules.cora import CoRAGenerator
from ckf_dist.modules.inject import inject_multi_lora
from ckf_dist.modules.meta_net import CFMapper
from ckf_dist.modules.multi_lora import LoRAContext

TRAINABLE_FORMAT = "ckf_trainable/1"


def curriculum_weight(step: int, total: int, midpoint: float = 0.5) -> float:
    """Text-only loss weight w(step) = 1 / (1 + exp(8 (step - b) / b)), b = midpoint * total (the CKF paper;
    the reference code's b is half the steps, ``train.curriculum_midpoint`` = 0.5).

    w starts near 1 (text-only prompts dominate), is 0.5 at b, and falls to near 0 by 2 b.
    """
    b = max(float(total) * float(midpoint), 1e-8)
    x = max(-60.0, min(60.0, 8.0 * (float(step) - b) / b))
    return 1.0 / (1.0 + math.exp(x))


def text_path_chosen(seed: int, step: int, weight: float) -> bool:
    """train.curriculum_mode=sample: whether `step` trains the text-only twin (probability `weight`).

    The same on every rank and after a resume (a hash of seed and step, not an RNG stream), so
    the expected loss is w L_text + (1 - w) L_cf while each step pays for one path only."""
    h = hashlib.sha256(f"ckf-curriculum/{seed}/{step}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < weight


@dataclass
class CKFOutput(ModelOutput):
    """loss: scalar with grad. task_losses: task name -> detached mean over that task's target
    tokens (same curriculum mix as ``loss``). cf_loss / text_loss: detached means of each path
    (text_loss None without the curriculum). text_weight: w used. num_tokens: target tokens.

    A transformers ``ModelOutput`` (an ordered dict with attribute access; None fields are not
    keys), so DeepSpeed ZeRO-3 finds the tensors in it and hooks its backward (it cannot see into
    a plain dataclass). ``forward`` sets every field; ModelOutput needs None defaults."""

    loss: Optional[torch.Tensor] = None
    task_losses: Optional[dict[str, torch.Tensor]] = None
    cf_loss: Optional[torch.Tensor] = None
    text_loss: Optional[torch.Tensor] = None
    text_weight: Optional[float] = None
    num_tokens: Optional[int] = None


def _token_norm(embedding: nn.Module, exclude: int) -> float:
    w = embedding.weight
    if w.numel() == 0:
        raise RuntimeError("the LLM's input embeddings are empty (partitioned?): build CKFModel before ZeRO-3 partitioning")
    with torch.no_grad():
        norms = w.detach().float().norm(dim=1)
        keep = torch.ones_like(norms, dtype=torch.bool)
        if 0 <= exclude < keep.numel():
            keep[exclude] = False
        return float(norms[keep].mean())


def _mean_row_norm(table: torch.Tensor, what: str) -> float:
    """Mean L2 norm of a CF table's non-zero rows (rows without training data are all zero)."""
    norms = torch.as_tensor(table).detach().float().norm(dim=1)
    norms = norms[norms > 0]
    if norms.numel() == 0:
        raise ValueError(f"model.token_norm=table: the CF {what} table has no non-zero row")
    return float(norms.mean())


class CKFModel(nn.Module):
    """Frozen HF causal LM + Multi-LoRA + CF mapping.

    Args:
      llm: an HF causal LM (LLaMA / Qwen2 / Mistral family); adapters are injected in place.
      tokenizer: its tokenizer, with ``cfg.model.placeholder_token`` as one id (``load_llm``).
      user_emb: [U, d] float32 CF user table; item_emb: [I, d] float32 CF item table (frozen).
      cfg: Config (model, lora, train.curriculum, kernels.backend).
      user_encoder: a sequential CF backbone's frozen encoder (``cf.model=sasrec|din``,
        :func:`ckf_dist.cf.sequential.build_encoder`): a row's user vector is then its encoding of
        the row's history (``history_ids``; DIN against the mean of the row's items) instead of
        the row of ``user_emb``.
      item_tokens: ``model.mapping=allmrec``: [I, d'] the items in the joint space of the alignment
        stage, which the item soft tokens are projected from (the CF item table still folds users in).
      item_bias, global_bias, fold_in_ridge: MF's item biases [I] and global bias, for the
        rating-aware fold-in of users without a trained row (:mod:`ckf_dist.cf.foldin`); without
        them users fold in by the mean of their history rows. biases_in_vectors: the CF vectors end
        with the biases (:meth:`CFTables.model_inputs`, ``model.cf_biases``), where a folded-in
        user's bias goes.

    Build it before ZeRO-3 partitioning (it reads the token-embedding norm once).
    """

    def __init__(self, llm: nn.Module, tokenizer, user_emb: torch.Tensor, item_emb: torch.Tensor, cfg: Config,
                 user_encoder: Optional[nn.Module] = None, item_tokens: Optional[torch.Tensor] = None,
                 item_bias: Optional[torch.Tensor] = None, global_bias: float = 0.0, fold_in_ridge: Optional[float] = None,
                 biases_in_vectors: bool = False):
        super().__init__()
        user_emb = torch.as_tensor(user_emb, dtype=torch.float32)
        item_emb = torch.as_tensor(item_emb, dtype=torch.float32)
        if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
            raise ValueError(f"CF tables must be [U, d] and [I, d], got {tuple(user_emb.shape)} and {tuple(item_emb.shape)}")
        self.cfg = cfg
        self.cf_fusion = bool(cfg.model.cf_fusion)
        self.soft_tokens = cfg.model.prompt_kind() == "cf"
        """The prompt's placeholders take mapped CF vectors (ckf, collm, allmrec); else the prompt is text only."""
        self.curriculum = cfg.curriculum_on()
        self.tokenizer = tokenizer
        pid = tokenizer.convert_tokens_to_ids(cfg.model.placeholder_token)
        if pid is None or tokenizer(cfg.model.placeholder_token, add_special_tokens=False)["input_ids"] != [pid]:
            raise ValueError(f"the tokenizer does not encode {cfg.model.placeholder_token!r} as one id (use load_llm)")
        self.placeholder_id = int(pid)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.num_tasks = len(ALL_TASKS)

        self.llm = llm
        self.debug_checks = bool(cfg.train.debug_checks)
        """train.debug_checks: re-check the collator's invariants on the device (host reads)."""
        self.ctx = LoRAContext(num_tasks=self.num_tasks, check_ids=self.debug_checks)
        adapters = cfg.model.adapter_kind()
        self.row_adapters = adapters == "row"
        if adapters == "none":
            llm.requires_grad_(False)
            self.lora_modules: list[str] = []
        else:
            lora_cfg = cfg.lora if adapters == "multi" else dataclasses.replace(cfg.lora, task_specific=False)
            self.lora_modules = inject_multi_lora(llm, lora_cfg, self.num_tasks, self.ctx,
                                                  row_codes=cfg.model.meta_hidden if self.row_adapters else 0)
        if cfg.train.activation_checkpointing:
            # non-reentrant checkpoints, whose recomputation replays this forward's task segments
            kwargs = {"use_reentrant": False, "context_fn": self.ctx.checkpoint_context}
            if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x
                llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

        self.register_buffer("user_emb", user_emb, persistent=False)
        self.register_buffer("item_emb", item_emb, persistent=False)
        if item_bias is not None and tuple(item_bias.shape) != (item_emb.shape[0],):
            raise ValueError(f"item_bias must be [{item_emb.shape[0]}], got {tuple(item_bias.shape)}")
        self.register_buffer("item_bias", None if item_bias is None else torch.as_tensor(item_bias, dtype=torch.float32),
                             persistent=False)
        self.bias_coordinate = bool(biases_in_vectors and item_bias is not None)
        self.global_bias = float(global_bias)
        self.fold_in_ridge = float(cfg.cf.fold_in_ridge if fold_in_ridge is None else fold_in_ridge)
        self.user_encoder = user_encoder
        if user_encoder is not None:
            user_encoder.requires_grad_(False)
        emb = llm.get_input_embeddings()
        self.hidden_size = int(emb.weight.shape[1])
        if (item_tokens is not None) != (cfg.model.mapping == "allmrec" and self.soft_tokens):
            raise ValueError("item_tokens (the aligned item table) are needed by, and only by, model.mapping=allmrec")
        self.register_buffer("item_tokens", None if item_tokens is None else torch.as_tensor(item_tokens, dtype=torch.float32),
                             persistent=False)
        self.mapper: Optional[nn.Module] = None
        """The trained CF mapping: a CFMapper (soft tokens) or CoRA's generator (row adapters)."""
        if self.soft_tokens:
            self.token_norm = _token_norm(emb, self.placeholder_id)
            item_dim = None if item_tokens is None else int(item_tokens.shape[1])
            ref_norms = None
            if cfg.model.token_norm == "table":
                items = item_emb if item_tokens is None else self.item_tokens
                ref_norms = (_mean_row_norm(user_emb, "users"), _mean_row_norm(items, "items"))
            self.mapper = CFMapper(user_emb.shape[1], self.hidden_size, cfg.model, self.token_norm, item_dim=item_dim,
                                   ref_norms=ref_norms)
        elif self.row_adapters:
            self.mapper = CoRAGenerator(user_emb.shape[1], cfg.model.meta_hidden, cfg.lora.task.r)
        self._backends: dict[str, str] = {}

    # ------------------------------------------------------------------ parameters
    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        """Adapters (``llm.*.lora_*``) and the CF mapper (``mapper.*``), by name."""
        out = {}
        for n, p in self.named_parameters():
            if n.startswith("mapper.") or (n.startswith("llm.") and ".lora_" in n):
                out[n] = p
        return out

    @property
    def has_static_adapters(self) -> bool:
        """Whether trained LoRA adapters exist (what the PEFT export writes)."""
        return any(".lora_shared_" in n or ".lora_task_" in n for n in self.trainable_named_parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.trainable_named_parameters().values())

    def save_trainable(self, path: str | Path) -> Path:
        """Write the trainable tensors as safetensors (to ``path.tmp``, then renamed)."""
        from safetensors.torch import save_file

        tensors = {n: t.detach().to("cpu").contiguous() for n, t in self.trainable_named_parameters().items()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": TRAINABLE_FORMAT}))

    def load_trainable(self, path: str | Path) -> None:
        """Load tensors written by :meth:`save_trainable`; names and shapes must match exactly."""
        from safetensors.torch import load_file

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: trainable-state file not found")
        state = load_file(str(p))
        params = self.trainable_named_parameters()
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise ValueError(
                f"{p}: does not match this model ({len(missing)} missing, e.g. {missing[:1]}; "
                f"{len(extra)} unexpected, e.g. {extra[:1]})"
            )
        with torch.no_grad():
            for n, t in state.items():
                if tuple(t.shape) != tuple(params[n].shape):
                    raise ValueError(f"{p}: {n} has shape {tuple(t.shape)}, the model {tuple(params[n].shape)}")
                params[n].copy_(t.to(params[n].device, params[n].dtype))

    # ------------------------------------------------------------------ plumbing
    def _backend(self, device: torch.device) -> str:
        key = str(device)
        if key not in self._backends:
            self._backends[key] = resolve_backend(self.cfg.kernels.backend, device)
        return self._backends[key]

    def _set_backend(self, device: torch.device) -> None:
        b = self._backend(device)
        self.ctx.backend = b
        if isinstance(self.mapper, CFMapper):
            self.mapper.backend = b

    def _device_checks(self, batch: dict[str, Any]) -> bool:
        """Check invariants on the device: under train.debug_checks, or for a batch the collator
        did not build (no precomputed loss positions)."""
        return self.debug_checks or "target_rows" not in batch

    def cf_vectors(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mapped CF soft tokens: (users [B, D], items [M, D]) for the batch's rows and items."""
        if not self.soft_tokens:
            raise RuntimeError(f"model.mapping={self.cfg.model.mapping}, cf_fusion={self.cf_fusion}: the prompt takes no CF vectors")
        u, it, hist = batch["user_ids"], batch["item_ids"], batch["history_ids"]
        if self._device_checks(batch):
            for name, ids, table in (("user", u, self.user_emb), ("item", it, self.item_emb), ("history item", hist, self.item_emb)):
                if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
                    raise ValueError(f"{name} id {int(ids.max())} is outside the CF table ({table.shape[0]} rows)")
        e_hist = self.item_emb[hist]  # [B, H, d]
        items = self.item_emb if self.item_tokens is None else self.item_tokens
        return self.mapper(self.row_users(batch, e_hist), e_hist, batch["history_mask"], items[it])

    def row_codes(self, batch: dict[str, Any]) -> Optional[torch.Tensor]:
        """CoRA: the codes [B, r, h] of every row's generated adapter, from its user vector and the mean
        of its items' vectors; None in the other modes."""
        if not self.row_adapters:
            return None
        e_hist = self.item_emb[batch["history_ids"]]
        return self.mapper(self.row_users(batch, e_hist), self.row_items(batch))

    def _adapters(self, task_ids: torch.Tensor, seq_len: int, codes: Optional[torch.Tensor] = None,
                  rows: Optional[torch.Tensor] = None):
        """The adapter context of one LLM call over [B', seq_len]: row k of the call is row rows[k]
        of the batch (default: k). Task adapters by its task id, or (CoRA) the adapter generated
        from codes[rows[k]]."""
        if codes is None:
            return self.ctx.row_tasks(task_ids if rows is None else task_ids[rows], seq_len)
        if rows is None:
            rows = torch.arange(codes.shape[0], device=codes.device)
        return self.ctx.row_adapters(rows, seq_len, codes)

    def row_users(self, batch: dict[str, Any], e_hist: torch.Tensor) -> torch.Tensor:
        """The CF user vector of every row [B, d]: the sequential backbone's encoding of the row's
        history (e_hist [B, H, d]) when there is one, else the user's row folded in (:meth:`fold_in`).
        In training, ``train.user_token_dropout`` of the rows (all of them while
        ``train.item_first_until`` holds: :meth:`user_dropout`, passed as ``batch["user_dropout"]``)
        get a zero vector instead."""
        mask = batch["history_mask"]
        if self.user_encoder is None:
            e_u = self.user_emb[batch["user_ids"]]
            rate = self.cfg.train.user_fold_in_rate
            if self.training and rate > 0.0:  # train.user_fold_in_rate: these rows see the fold-in a new user gets
                e_u = e_u * (torch.rand(e_u.shape[0], device=e_u.device) >= rate).unsqueeze(-1).to(e_u.dtype)
            users = self.fold_in(e_u, e_hist, mask, batch.get("history_ratings"), batch["history_ids"])
        else:
            users = self.user_encoder(e_hist, mask, self.row_items(batch))
        drop = batch.get("user_dropout", self.cfg.train.user_token_dropout)
        if self.training and drop > 0.0:
            users = users * (torch.rand(users.shape[0], device=users.device) >= drop).unsqueeze(-1).to(users.dtype)
        return users

    def row_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, d]: the mean CF vector of each row's items (its target; a topk row's candidates)."""
        b = batch["user_ids"].shape[0]
        rows, e_i = batch["item_rows"], self.item_emb[batch["item_ids"]]
        sums = e_i.new_zeros((b, e_i.shape[1])).index_add(0, rows, e_i)
        counts = e_i.new_zeros(b).index_add(0, rows, torch.ones_like(rows, dtype=e_i.dtype))
        return sums / counts.clamp_min(1).unsqueeze(1)

    def fold_in(self, e_u: torch.Tensor, e_hist: torch.Tensor, hist_mask: torch.Tensor,
                ratings: Optional[torch.Tensor] = None, hist_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """e_u [B, d] rows of the CF user table -> [B, d]: users without a trained row (all zero: no
        training interaction) folded in from their history (e_hist [B, H, d], hist_mask [B, H]) and
        the ratings they gave it (ratings [B, H], NaN unknown; hist_ids [B, H]), by the rule of
        :meth:`ckf_dist.cf.tables.CFTables.fold_in`."""
        if self.item_bias is None or ratings is None or hist_ids is None:
            return fold_in(e_u, e_hist, hist_mask)[0]
        d = e_u.shape[1] - int(self.bias_coordinate)
        vec, bias = fold_in(e_u[:, :d], e_hist[..., :d], hist_mask, ratings, self.item_bias[hist_ids], self.global_bias,
                            self.fold_in_ridge, e_u[:, d] if self.bias_coordinate else None)
        return torch.cat([vec, bias.unsqueeze(-1)], -1) if self.bias_coordinate else vec

    def embed(self, input_ids: torch.Tensor, batch: dict[str, Any], cf: Optional[bool] = None) -> torch.Tensor:
        """input_ids [B, L] -> inputs_embeds [B, L, D] with CF vectors at every row's placeholders.

        Row b's k-th placeholder (row-major order) gets the user vector when k = 0, else the
        vector of the (k-1)-th item of row b (``item_ids`` / ``item_rows``). The count per row
        must be 1 + its number of items. ``cf=False`` (the text-only twin) expects no placeholder.
        """
        cf = self.soft_tokens if cf is None else cf
        emb = self.llm.get_input_embeddings()(input_ids)
        b = input_ids.shape[0]
        if not cf:
            if self._device_checks(batch) and bool((input_ids == self.placeholder_id).any()):
                raise ValueError("placeholder tokens in a text-only prompt")
            return emb
        if "cf_rows" in batch and not self.debug_checks:
            # positions and slots from the collator (checked there, on the CPU): no host read here
            users, items = self.cf_vectors(batch)
            vecs = torch.cat([users, items], 0)[batch["cf_slots"]].to(emb.dtype)
            return emb.index_put((batch["cf_rows"], batch["cf_cols"]), vecs)
        mask = input_ids == self.placeholder_id
        rows, cols = mask.nonzero(as_tuple=True)  # row-major
        item_rows = batch["item_rows"].to(input_ids.device)
        n_items = torch.bincount(item_rows, minlength=b)[:b] if item_rows.numel() else torch.zeros(b, dtype=torch.long, device=input_ids.device)
        counts = torch.bincount(rows, minlength=b)[:b] if rows.numel() else torch.zeros(b, dtype=torch.long, device=input_ids.device)
        if not torch.equal(counts, n_items + 1):
            bad = int((counts != n_items + 1).nonzero()[0])
            key = batch.get("keys", [None] * b)[bad]
            raise ValueError(
                f"row {bad} ({key}): {int(counts[bad])} placeholders for 1 user + {int(n_items[bad])} items"
            )
        if item_rows.numel() > 1 and bool((item_rows[1:] < item_rows[:-1]).any()):
            raise ValueError("item_rows must be sorted by row (items of row 0, then row 1, ...)")
        users, items = self.cf_vectors(batch)
        first = torch.cumsum(counts, 0) - counts  # [B] index of each row's first placeholder
        rank = torch.arange(rows.numel(), device=rows.device) - first[rows]  # 0 = user slot
        item_start = torch.cumsum(n_items, 0) - n_items
        idx = torch.where(rank == 0, rows, b + item_start[rows] + rank - 1)
        vecs = torch.cat([users, items], 0)[idx].to(emb.dtype)  # [B + M][idx] -> [P, D]
        return emb.index_put((rows, cols), vecs)

    def _attention_mask(self, attention_mask: torch.Tensor, padded: Optional[bool]) -> Optional[torch.Tensor]:
        """The mask handed to the LLM. transformers reads a 2-D mask (or, without one, the position
        ids) from the host to decide whether it may skip it; with `padded` known on the host (the
        collator's flag) and SDPA attention, the 4-D boolean mask it would build (causal and key
        padding) is handed over instead, so nothing is read back. Other attention implementations
        (and batches without the flag) get the 2-D mask."""
        if padded is None or self.debug_checks or getattr(self.llm.config, "_attn_implementation", None) != "sdpa":
            return attention_mask
        n = attention_mask.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=attention_mask.device).tril()[None, None]
        if not padded:
            return causal.expand(attention_mask.shape[0], 1, n, n)
        return causal & attention_mask.bool()[:, None, None, :]

    def _decoder_hidden(self, embeds: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor,
                        padded: Optional[bool] = None, codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last hidden states [B, L, D] of the LLM's decoder (no LM head), adapters selected per row."""
        self._set_backend(embeds.device)
        attention_mask = self._attention_mask(attention_mask, padded)
        with self._adapters(task_ids, embeds.shape[1], codes):
            out = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def _lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> float32 logits [..., V] through the LLM's output layer."""
        return self.llm.get_output_embeddings()(hidden).float()

    def _token_nll(self, batch: dict[str, Any], text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target-token NLL of one path -> (nll [n] float32, row of each token [n])."""
        pre = "text_" if text else ""
        ids, attn, labels = batch[pre + "input_ids"], batch[pre + "attention_mask"], batch[pre + "labels"]
        embeds = self.embed(ids, batch, cf=False if text else None)
        hidden = self._decoder_hidden(embeds, attn, batch["task_ids"], batch.get(pre + "padded"),
                                      None if text else self.row_codes(batch))
        if pre + "target_rows" in batch:
            # loss positions from the collator: static shapes, no host read
            rows, cols = batch[pre + "target_rows"], batch[pre + "target_cols"]
            logits = self._lm_logits(hidden[rows, cols])  # [n, V]
            return F.cross_entropy(logits, labels[rows, cols + 1], reduction="none"), rows
        target = labels[:, 1:]
        sel = target != -100  # [B, L-1]: position t predicts token t + 1
        logits = self._lm_logits(hidden[:, :-1][sel])  # [n, V]
        nll = F.cross_entropy(logits, target[sel], reduction="none")
        return nll, sel.nonzero()[:, 0]

    def _task_means(self, nll: torch.Tensor, rows: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Mean NLL per task present in the batch (0-d tensors on the device). Which tasks are
        present is read from the batch's host-side task names when it has them."""
        tok_task = batch["task_ids"][rows]
        sums = torch.zeros(self.num_tasks, device=nll.device, dtype=nll.dtype).index_add(0, tok_task, nll.detach())
        cnt = torch.zeros(self.num_tasks, device=nll.device, dtype=nll.dtype).index_add(0, tok_task, torch.ones_like(nll))
        if "tasks" in batch:  # every row has target tokens (the collator never cuts the target)
            present = sorted({ALL_TASKS.index(t) for t in batch["tasks"]})
        else:
            present = [t for t in range(self.num_tasks) if int(cnt[t]) > 0]
        return {ALL_TASKS[t]: sums[t] / cnt[t] for t in present}

    # ------------------------------------------------------------------ training
    def user_dropout(self, step: Optional[int], total_steps: Optional[int]) -> float:
        """Share of training rows whose CF user vector is zeroed at `step`: all of them before
        train.item_first_until of the steps, train.user_token_dropout after (and without a step)."""
        t = self.cfg.train
        if step is not None and total_steps and step < t.item_first_until * total_steps:
            return 1.0
        return t.user_token_dropout

    def forward(self, batch: dict[str, Any], step: Optional[int] = None, total_steps: Optional[int] = None) -> CKFOutput:
        """Causal-LM loss on target tokens (mean over the batch's target tokens).

        With the curriculum (``Config.curriculum_on``) and ``step``/``total_steps`` given, the batch
        must hold the text-only twin and loss = w L_text + (1 - w) L_cf, w = curriculum_weight.
        """
        use_curriculum = self.curriculum and step is not None and bool(total_steps)
        batch = {**batch, "user_dropout": self.user_dropout(step, total_steps)}
        if use_curriculum and "text_input_ids" not in batch:
            raise ValueError("train.curriculum needs the text-only twin in the batch (Collator(text_twin=True))")
        w = curriculum_weight(step, total_steps, self.cfg.train.curriculum_midpoint) if use_curriculum else 0.0
        if use_curriculum and self.cfg.train.curriculum_mode == "sample" and text_path_chosen(self.cfg.seed, step, w):
            nll_t, rows_t = self._token_nll(batch, text=True)
            text_loss = nll_t.mean()
            return CKFOutput(loss=text_loss, task_losses=self._task_means(nll_t, rows_t, batch),
                             text_loss=text_loss.detach(), text_weight=w, num_tokens=nll_t.numel())
        nll, rows = self._token_nll(batch)
        if nll.numel() == 0:
            raise ValueError("batch without target tokens")
        cf_loss = nll.mean()
        per_task = self._task_means(nll, rows, batch)
        if not use_curriculum or self.cfg.train.curriculum_mode == "sample":
            return CKFOutput(loss=cf_loss, task_losses=per_task, cf_loss=cf_loss.detach(), text_weight=w, num_tokens=nll.numel())
        nll_t, rows_t = self._token_nll(batch, text=True)
        text_loss = nll_t.mean()
        loss = w * text_loss + (1.0 - w) * cf_loss
        per_text = self._task_means(nll_t, rows_t, batch)
        mixed = {k: w * per_text[k] + (1.0 - w) * v for k, v in per_task.items()}
        return CKFOutput(loss=loss, task_losses=mixed, cf_loss=cf_loss.detach(), text_loss=text_loss.detach(),
                         text_weight=w, num_tokens=nll.numel())

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def answer_hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, D] the decoder's last hidden state at the first answer position (the prompt's last
        token, whose logits predict the first target token); the prompt only runs."""
        plen = batch["prompt_lengths"]
        width = int(plen.max())
        ids = batch["input_ids"][:, :width]
        embeds = self.embed(ids, batch)
        hidden = self._decoder_hidden(embeds, batch["attention_mask"][:, :width], batch["task_ids"],
                                      codes=self.row_codes(batch))
        return hidden[torch.arange(ids.shape[0], device=ids.device), plen - 1]

    @torch.no_grad()
    def answer_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """float32 logits [B, V] at the first answer position (predicting the first target token)."""
        return self._lm_logits(self.answer_hidden(batch))

    @torch.no_grad()
    def yes_probability(self, batch: dict[str, Any], yes_id: int, no_id: int) -> torch.Tensor:
        """ctr score [B]: P(Yes) / (P(Yes) + P(No)) at the first answer position."""
        logits = self.answer_logits(batch)
        return torch.softmax(logits[:, [yes_id, no_id]], dim=-1)[:, 0]

    @torch.no_grad()
    def sequence_logprob(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B] float32: sum of log-probabilities of each row's labelled tokens (target + EOS)."""
        nll, rows = self._token_nll(batch)
        out = torch.zeros(batch["input_ids"].shape[0], device=nll.device, dtype=torch.float32)
        return out.index_add(0, rows, -nll)

    @torch.no_grad()
    def candidate_logprobs(self, batch: dict[str, Any], candidates: list[list[list[int]]]) -> list[list[tuple[float, int]]]:
        """Score answer candidates after each row's prompt: row b, candidate c (token ids without EOS)
        -> (sum of log-probabilities of its tokens and EOS, number of those tokens).

        The prompt runs once per row; every candidate continues from the row's KV cache (prompts
        are right-padded: the pad columns stay masked and positions continue from the row's own
        prompt length), so a topk sample costs one prompt plus its candidates' few tokens instead
        of one full sequence per candidate. Same numbers as scoring ``prompt + candidate + EOS``
        with the training forward."""
        plen = batch["prompt_lengths"]
        device = batch["input_ids"].device
        width = int(plen.max())
        # columns past a row's prompt hold its target or padding: masked for the continuations
        attn = (torch.arange(width, device=device).unsqueeze(0) < plen.unsqueeze(1)).to(batch["attention_mask"].dtype)
        embeds = self.embed(batch["input_ids"][:, :width], batch)
        task_ids = batch["task_ids"]
        self._set_backend(device)
        decoder = self.llm.get_decoder()
        codes = self.row_codes(batch)
        with self._adapters(task_ids, width, codes):
            out = decoder(inputs_embeds=embeds, attention_mask=attn, use_cache=True)
        rows = torch.arange(plen.shape[0], device=device)
        first = torch.log_softmax(self._lm_logits(out.last_hidden_state[rows, plen - 1]), -1)  # [B, V]
        owner = [b for b, cands in enumerate(candidates) for _ in cands]
        seqs = [list(c) + [self.eos_id] for cands in candidates for c in cands]
        if not seqs:
            return [[] for _ in candidates]
        length = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(seqs), length), dtype=attn.dtype, device=device)
        for n, q in enumerate(seqs):
            ids[n, : len(q)] = torch.tensor(q, device=device)
            mask[n, : len(q)] = 1
        idx = torch.tensor(owner, device=device)
        past = out.cache
        past.batch_select_indices(idx)  # one cache row per candidate
        pos = plen[idx].unsqueeze(1) + torch.arange(length, device=device).unsqueeze(0)
        with self._adapters(task_ids, length, codes, rows=idx):
            cont = decoder(input_ids=ids, attention_mask=torch.cat([attn[idx], mask], 1), position_ids=pos,
                           cache=past, use_cache=True)
        lp = first[idx].gather(1, ids[:, :1])  # [N, 1]: first token from the prompt's last position
        if length > 1:
            later = torch.log_softmax(self._lm_logits(cont.last_hidden_state[:, :-1]), -1)  # [N, T-1, V]
            lp = torch.cat([lp, later.gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)], 1)
        lp = (lp * mask).sum(1).tolist()
        result: list[list[tuple[float, int]]] = [[] for _ in candidates]
        for n, b in enumerate(owner):
            result[b].append((lp[n], len(seqs[n])))
        return result

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding with a KV cache from each row's prompt; -> new token ids per row (EOS cut).

        Prompts of different lengths are re-padded on the LEFT for generation only (position ids
        from the attention mask), so every row's next token sits in the last column. The KV cache
        is a transformers ``DynamicCache`` owned here and passed under the keyword the LLM's
        forward takes (``cache`` since transformers 5, ``past_key_values`` before).
        """
        import inspect

        from transformers import DynamicCache

        cache_kw = "cache" if "cache" in inspect.signature(self.llm.forward).parameters else "past_key_values"
        with_config = "config" in inspect.signature(DynamicCache.__init__).parameters
        cache = DynamicCache(config=self.llm.config) if with_config else DynamicCache()
        plen = batch["prompt_lengths"]
        device = batch["input_ids"].device
        b = plen.shape[0]
        width = int(plen.max())
        embeds = self.embed(batch["input_ids"][:, :width], batch)  # [B, P, D] right-padded
        shift = (width - plen).unsqueeze(1)  # [B, 1]
        col = torch.arange(width, device=device).unsqueeze(0)  # [1, P]
        src = col - shift
        valid = src >= 0
        gathered = embeds.gather(1, src.clamp_min(0).unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        embeds = torch.where(valid.unsqueeze(-1), gathered, torch.zeros_like(gathered))
        attn = valid.long()
        pos = (attn.cumsum(1) - 1).clamp_min(0)
        task_ids = batch["task_ids"]
        self._set_backend(device)
        codes = self.row_codes(batch)
        with self._adapters(task_ids, width, codes):
            out = self.llm(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                           **{cache_kw: cache})
        nxt = out.logits[:, -1].argmax(-1)
        next_pos = plen.clone().unsqueeze(1)  # [B, 1]
        steps: list[torch.Tensor] = []
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for i in range(max_new_tokens):
            steps.append(nxt)
            done |= nxt == self.eos_id
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=device)], 1)
            with self._adapters(task_ids, 1, codes):
                out = self.llm(input_ids=nxt.unsqueeze(1), attention_mask=attn, position_ids=next_pos,
                               use_cache=True, **{cache_kw: cache})
            next_pos = next_pos + 1
            nxt = out.logits[:, -1].argmax(-1)
        if not steps:
            return [[] for _ in range(b)]
        toks = torch.stack(steps, 1).tolist()
        result = []
        for row in toks:
            result.append(row[: row.index(self.eos_id)] if self.eos_id in row else row)
        return result
