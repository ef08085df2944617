"""Sample dicts -> padded batch tensors for :class:`ckf_dist.models.ckf.CKFModel`.

Owns: tokenization of prompt and target, the label mask, right padding, truncation, and the
index tensors that tell the model which CF vector goes to which placeholder.
Must not know: the model's internals, DeepSpeed, Ray.

Sequence layout of a row (the CKF paper, arXiv 2410.20642)::

    [tokenizer(prompt) incl. BOS if the tokenizer adds one] [tokenizer(target)] [EOS] [pad ...]
     labels = -100 ..................................        target ids          EOS   -100 ...

Prompt and target are tokenized separately and concatenated, so the first answer position is
``prompt_lengths[b]`` for training, likelihood scoring and generation alike. Padding is on the
right (left padding gave NaN losses with LLaMA-2 in CoLLM's issue #6); generation re-pads
prompts on the left internally.

Truncation to ``model.max_length`` never cuts the target nor a placeholder: tokens are removed
from the longest placeholder-free stretch of the prompt (the one holding the history text in
every template of ``ckf_dist.tasks``), oldest side first. The stretch's last ``KEEP_TAIL``
tokens (the question and the title next to the following placeholder) are always kept, its
first ``KEEP_HEAD`` tokens (the clause introducing the history) while there is room. If the
rest is too short, a one-line ValueError names the sample and asks for a larger
``model.max_length``. ``truncated`` in the batch counts rows that were cut.

The main fields come from the prompt the mode reads (``ModelConfig.prompt_kind``): the CF prompt
with its placeholders (soft tokens), the CF prompt with every placeholder replaced by the tokens of
a code string (``model.mapping=binllm``: the ``codes`` object gives each row's user and item codes;
truncation protects them like placeholders), or the text-only twin (``prompt_text``:
``model.cf_fusion=false``, the text-only baseline, and ``model.mapping=cora``). With the curriculum
(``Config.curriculum_on``) the twin is also built, as ``text_*`` fields (``text_twin`` overrides:
e.g. False for evaluation).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ckf_dist.config import ALL_TASKS, Config
from ckf_dist.data.folds import sample_folds
from ckf_dist.data.samples import history_ratings

KEEP_HEAD = 16
"""Tokens kept at the start of the stretch being truncated (the clause that introduces it)."""
KEEP_TAIL = 48
"""Tokens always kept at the end of that stretch (the question and the title next to a placeholder)."""


def target_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of an answer text exactly as the collator tokenizes targets (no specials, no EOS).

    E.g. ``target_token_ids(tok, "Yes")[0]`` is the id whose probability ``answer_logits`` scores.
    """
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class Collator:
    """Callable: list of sample dicts -> dict of batch tensors.

    Args:
      tokenizer: an HF tokenizer with EOS; pad falls back to EOS (pad positions are masked).
      cfg: Config (model.max_length, model.mapping, model.cf_fusion, model.placeholder_token, train.curriculum).
      placeholder_id: the id of ``cfg.model.placeholder_token`` (must encode to exactly that id).
      text_twin: build the ``text_*`` fields; None = ``cfg.curriculum_on()``.
      codes: for ``model.mapping=binllm``, an object whose ``sample_codes(samples)`` gives per sample
        the code strings of its user and items (:class:`ckf_dist.cf.binarize.TextCodes`).

    Batch fields (B rows, L = longest row, M = placeholders after the users', H = longest history):
      keys: list[str]; tasks: list[str]
      task_ids [B] int64 (position in config.ALL_TASKS); user_ids [B] int64 (rows of the stacked tables
        with ``cross_fit``, as item_ids and history_ids: see :meth:`_out_of_fold`)
      input_ids [B, L] int64; attention_mask [B, L] int64; labels [B, L] int64 (-100 = no loss)
      prompt_lengths [B] int64: tokens before the first target token
      item_ids [M] int64, item_rows [M] int64: items of all rows in row then prompt order
      history_ids [B, H] int64 (0-padded), history_mask [B, H] bool
      history_ratings [B, H] float32: the rating given to each history item (NaN: unrated or padding)
      label [B] float32 (NaN where the sample has none); truncated: int
      text_input_ids, text_attention_mask, text_labels, text_prompt_lengths: the twin (optional)

    Index fields, computed here on the CPU so the model's forward needs no data-dependent shape
    (no device-to-host read per micro-step):
      cf_rows, cf_cols [P] int64: the placeholders' positions, row-major (soft-token prompts only)
      cf_slots [P] int64: what each one receives, an index into cat([user vectors [B], item vectors [M]])
      target_rows, target_cols [n] int64: positions t whose next token t + 1 is labelled (the
        loss positions, row-major); text_target_rows / text_target_cols for the twin
      num_tokens, text_num_tokens: int, non-pad tokens of each path
      padded, text_padded: bool, whether any row of the path is shorter than the batch

    Checked once per batch: tasks, placeholder counts (1 user + the row's items), and, when the
    CF table sizes are given (``num_users`` / ``num_items``), every user, item and history id.
    """

    def __init__(self, tokenizer, cfg: Config, placeholder_id: int, text_twin: Optional[bool] = None,
                 num_users: Optional[int] = None, num_items: Optional[int] = None, codes: Any = None,
                 cross_fit: int = 0):
        self.tok = tokenizer
        self.max_length = int(cfg.model.max_length)
        self.prompt_kind = cfg.model.prompt_kind()
        self.soft_tokens = self.prompt_kind == "cf"
        self.reads_cf = bool(cfg.model.cf_fusion)
        """The model reads the CF tables for these rows (every mode but the text-only baseline)."""
        if self.prompt_kind == "codes" and codes is None:
            raise ValueError("model.mapping=binllm: the collator needs the codes of the mode stage")
        self.codes = codes
        self._code_ids: dict[str, list[int]] = {}
        self.placeholder = cfg.model.placeholder_token
        self.placeholder_id = int(placeholder_id)
        self.text_twin = cfg.curriculum_on() if text_twin is None else bool(text_twin)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token")
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        enc = tokenizer(self.placeholder, add_special_tokens=False)["input_ids"]
        if list(enc) != [self.placeholder_id]:
            raise ValueError(
                f"placeholder {self.placeholder!r} encodes to {list(enc)}, not the single id {self.placeholder_id}"
            )
        self.special_ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", [])) - {self.placeholder_id}
        self.num_users, self.num_items = num_users, num_items
        self.cross_fit = int(cross_fit)
        """Folds of out-of-fold CF tables after the full ones (0: none): each row's CF ids point into
        the block of the fold that did not see its target interaction (:mod:`ckf_dist.data.folds`)."""
        if self.cross_fit and (num_users is None or num_items is None):
            raise ValueError("cross_fit needs the CF table sizes (num_users, num_items)")

    # ------------------------------------------------------------------ truncation
    def _truncate(self, prompt: list[int], budget: int, key: str) -> list[int]:
        """Drop len(prompt) - budget tokens from the longest placeholder-free stretch."""
        excess = len(prompt) - budget
        # Stretches between protected tokens (placeholders, and leading special tokens like BOS).
        protected = [i for i, t in enumerate(prompt) if t == self.placeholder_id]
        lead = 0
        while lead < len(prompt) and prompt[lead] in self.special_ids:
            lead += 1
        bounds = [lead - 1] + protected + [len(prompt)]
        best = max(((bounds[k] + 1, bounds[k + 1]) for k in range(len(bounds) - 1)), key=lambda s: s[1] - s[0])
        start, end = best
        length = end - start
        tail = min(KEEP_TAIL, length)
        if length - tail < excess:
            raise ValueError(
                f"sample {key}: prompt of {len(prompt)} tokens cannot fit model.max_length={self.max_length} "
                f"with its target without cutting a placeholder or the question (longest cuttable stretch "
                f"{length - tail} tokens, {excess} to cut); raise model.max_length"
            )
        head = min(KEEP_HEAD, length - tail - excess)
        cut = start + head
        return prompt[:cut] + prompt[cut + excess :]

    def _code_tokens(self, code: str) -> list[int]:
        """Token ids of one code string (cached: item codes repeat across batches)."""
        ids = self._code_ids.get(code)
        if ids is None:
            ids = self._code_ids[code] = list(self.tok(code, add_special_tokens=False)["input_ids"])
        return ids

    def _expand(self, p: list[int], codes: list[list[int]], key: str) -> list[int]:
        """Replace the k-th placeholder of `p` by the tokens of the row's k-th code."""
        if p.count(self.placeholder_id) != len(codes):
            raise ValueError(f"sample {key}: {p.count(self.placeholder_id)} placeholder tokens in the prompt, "
                             f"expected {len(codes)} (1 user + {len(codes) - 1} items)")
        out, k = [], 0
        for tok in p:
            if tok == self.placeholder_id:
                out += codes[k]
                k += 1
            else:
                out.append(tok)
        return out

    def _encode(self, prompts: Sequence[str], targets: Sequence[str], keys: Sequence[str],
                codes: Optional[Sequence[Sequence[str]]] = None):
        """-> (rows of ids, prompt lengths, number truncated). `codes`: per row, the strings that
        replace its placeholders (truncation runs first and keeps every placeholder)."""
        p_ids = self.tok(list(prompts), add_special_tokens=True)["input_ids"]
        t_ids = self.tok(list(targets), add_special_tokens=False)["input_ids"]
        rows, plens, n_cut = [], [], 0
        for r, (p, t, key) in enumerate(zip(p_ids, t_ids, keys)):
            p, tgt = list(p), list(t) + [self.eos_id]
            code_ids = [self._code_tokens(c) for c in codes[r]] if codes is not None else None
            extra = sum(len(c) for c in code_ids) - len(code_ids) if code_ids is not None else 0
            if self.placeholder_id in tgt:
                raise ValueError(f"sample {key}: the target contains the placeholder token")
            budget = self.max_length - len(tgt) - extra
            if budget < 1:
                raise ValueError(
                    f"sample {key}: target of {len(tgt)} tokens (with EOS) leaves no room for the prompt "
                    f"in model.max_length={self.max_length}"
                )
            if len(p) > budget:
                p = self._truncate(p, budget, key)
                n_cut += 1
            if code_ids is not None:
                p = self._expand(p, code_ids, key)
            rows.append((p, tgt))
            plens.append(len(p))
        return rows, plens, n_cut

    def _check_ids(self, samples: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
        """Every CF id inside the tables (when their sizes are known)."""
        for s, key in zip(samples, keys):
            for name, ids, n in (("user", [s["user"]], self.num_users), ("item", s["items"], self.num_items),
                                 ("history item", s.get("history") or [], self.num_items)):
                if n is None:
                    continue
                for i in ids:
                    if not 0 <= int(i) < n:
                        raise ValueError(f"sample {key}: {name} id {int(i)} is outside the CF table ({n} rows)")

    def _out_of_fold(self, batch: dict[str, Any], samples: Sequence[dict[str, Any]]) -> None:
        """Point each row's user, item and history ids at block 1 + f of the stacked CF tables, f the
        fold of the row's target interaction: the fit that never saw this row's answer."""
        block = torch.from_numpy(sample_folds(samples, self.cross_fit) + 1)
        batch["user_ids"] += block * self.num_users
        batch["item_ids"] += block[batch["item_rows"]] * self.num_items
        batch["history_ids"] += block.unsqueeze(1) * self.num_items

    @staticmethod
    def _targets(rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss positions: t such that token t + 1 is labelled (the target and EOS of each row)."""
        r_idx = [r for r, (p, t) in enumerate(rows) for _ in range(len(t))]
        c_idx = [c for p, t in rows for c in range(len(p) - 1, len(p) + len(t) - 1)]
        return torch.tensor(r_idx, dtype=torch.long), torch.tensor(c_idx, dtype=torch.long)

    def _placeholders(self, rows, samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row b's k-th placeholder gets slot b (its user) when k = 0, else B + (index of its (k-1)-th item)."""
        b = len(rows)
        r_idx, c_idx, slots = [], [], []
        item_start = 0
        for r, ((p, _), s) in enumerate(zip(rows, samples)):
            k = 0
            for c, tok in enumerate(p):
                if tok == self.placeholder_id:
                    r_idx.append(r)
                    c_idx.append(c)
                    slots.append(r if k == 0 else b + item_start + k - 1)
                    k += 1
            item_start += len(s["items"])
        as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        return as_t(r_idx), as_t(c_idx), as_t(slots)

    def _pad(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(p) + len(t) for p, t in rows)
        b = len(rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        for r, (p, t) in enumerate(rows):
            n = len(p) + len(t)
            ids[r, :n] = torch.tensor(p + t, dtype=torch.long)
            mask[r, :n] = 1
            labels[r, len(p) : n] = torch.tensor(t, dtype=torch.long)
        return ids, mask, labels

    # ------------------------------------------------------------------ main
    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("empty batch")
        keys = [str(s.get("key", i)) for i, s in enumerate(samples)]
        for s, key in zip(samples, keys):
            if s["task"] not in ALL_TASKS:
                raise ValueError(f"sample {key}: unknown task {s['task']!r}")
        targets = [str(s.get("target") or "") for s in samples]
        if self.reads_cf:
            self._check_ids(samples, keys)
        main_prompts = [s["prompt_text"] if self.prompt_kind == "text" else s["prompt"] for s in samples]
        codes = self.codes.sample_codes(samples) if self.prompt_kind == "codes" else None
        rows, plens, n_cut = self._encode(main_prompts, targets, keys, codes)
        for (p, _), s, key in zip(rows, samples, keys):
            n = p.count(self.placeholder_id)
            want = 1 + len(s["items"]) if self.soft_tokens else 0
            if n != want:
                raise ValueError(
                    f"sample {key}: {n} placeholder tokens in the {'prompt_text' if self.prompt_kind == 'text' else 'prompt'}"
                    f"{' with its codes' if codes is not None else ''}, expected {want}"
                    + (f" (1 user + {len(s['items'])} items)" if self.soft_tokens else "")
                )
        ids, mask, labels = self._pad(rows)
        target_rows, target_cols = self._targets(rows)

        hist = [list(s.get("history") or []) for s in samples]
        h = max(1, max(len(x) for x in hist))
        history_ids = torch.zeros((len(samples), h), dtype=torch.long)
        history_mask = torch.zeros((len(samples), h), dtype=torch.bool)
        ratings = torch.full((len(samples), h), float("nan"), dtype=torch.float32)
        for r, (x, given) in enumerate(zip(hist, history_ratings(samples))):
            if x:
                history_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                history_mask[r, : len(x)] = True
                ratings[r, : len(x)] = torch.tensor([float("nan") if v is None else float(v) for v in given], dtype=torch.float32)
        item_ids = [int(i) for s in samples for i in s["items"]]
        item_rows = [r for r, s in enumerate(samples) for _ in s["items"]]
        label = [float("nan") if s.get("label") is None else float(s["label"]) for s in samples]

        batch: dict[str, Any] = {
            "keys": keys,
            "tasks": [s["task"] for s in samples],
            "task_ids": torch.tensor([ALL_TASKS.index(s["task"]) for s in samples], dtype=torch.long),
            "user_ids": torch.tensor([int(s["user"]) for s in samples], dtype=torch.long),
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "prompt_lengths": torch.tensor(plens, dtype=torch.long),
            "item_ids": torch.tensor(item_ids, dtype=torch.long),
            "item_rows": torch.tensor(item_rows, dtype=torch.long),
            "history_ids": history_ids,
            "history_mask": history_mask,
            "history_ratings": ratings,
            "label": torch.tensor(label, dtype=torch.float32),
            "truncated": n_cut,
            "target_rows": target_rows,
            "target_cols": target_cols,
            "num_tokens": sum(len(p) + len(t) for p, t in rows),
            "padded": len({len(p) + len(t) for p, t in rows}) > 1,
        }
        if self.cross_fit and self.reads_cf:
            self._out_of_fold(batch, samples)
        if self.soft_tokens:
            batch["cf_rows"], batch["cf_cols"], batch["cf_slots"] = self._placeholders(rows, samples)
        if self.text_twin and self.prompt_kind != "text":
            rows_t, plens_t, n_cut_t = self._encode([s["prompt_text"] for s in samples], targets, keys)
            for (p, _), key in zip(rows_t, keys):
                if self.placeholder_id in p:
                    raise ValueError(f"sample {key}: prompt_text contains the placeholder token")
            t_ids, t_mask, t_labels = self._pad(rows_t)
            batch["text_target_rows"], batch["text_target_cols"] = self._targets(rows_t)
            batch["text_num_tokens"] = sum(len(p) + len(t) for p, t in rows_t)
            batch["text_padded"] = len({len(p) + len(t) for p, t in rows_t}) > 1
            batch.update(
                text_input_ids=t_ids,
                text_attention_mask=t_mask,
                text_labels=t_labels,
                text_prompt_lengths=torch.tensor(plens_t, dtype=torch.long),
            )
            batch["truncated"] += n_cut_t
        return batch


def index_fields(input_ids: torch.Tensor, labels: torch.Tensor, item_rows: torch.Tensor, placeholder_id: int,
                 prefix: str = "") -> dict[str, Any]:
    """The collator's index fields computed from finished CPU tensors (batches built by hand:
    benchmarks, tests): loss positions, and placeholder positions and slots (no prefix)."""
    b = input_ids.shape[0]
    t_rows, t_cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    out: dict[str, Any] = {prefix + "target_rows": t_rows, prefix + "target_cols": t_cols}
    if prefix:
        return out
    rows, cols = (input_ids == placeholder_id).nonzero(as_tuple=True)
    n_items = torch.bincount(item_rows, minlength=b)[:b]
    counts = torch.bincount(rows, minlength=b)[:b]
    if not torch.equal(counts, n_items + 1):
        raise ValueError("placeholders per row != 1 user + the row's items")
    rank = torch.arange(rows.numel()) - (torch.cumsum(counts, 0) - counts)[rows]
    item_start = torch.cumsum(n_items, 0) - n_items
    out.update(cf_rows=rows, cf_cols=cols, cf_slots=torch.where(rank == 0, rows, b + item_start[rows] + rank - 1))
    return out


def batch_to(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (other fields unchanged)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
