"""The evaluation loop shared by training validation, `ckf eval --run` and `ckf recommend`.

Per task (the CKF paper, arXiv 2410.20642), on the model's own predictions:
- ctr: P(Yes) / (P(Yes) + P(No)) at the first answer token -> AUC, UAUC;
- topk: every candidate title scored by its total log-probability as the answer (title tokens and
  EOS) over n ** eval.candidate_length_power, n its tokens (1: the mean per token; 0: the sum,
  which favours short titles) -> HR@k, NDCG@k; HR@1 by greedy decoding and exact
  title match (LLaRA's protocol);
- rating, review_rating: expected value over the rating scale's levels (the headline MAE/RMSE) and
  the most likely level (`mae_greedy`, `rmse_greedy`). On whole-star scales (1..5) each level is
  one digit token, scored at the first answer token; on others (half stars: "3.5") each level's
  probability is that of its whole answer (tokens and EOS, one KV-cached prompt pass), normalised
  over the levels;
- explanation: greedy generation -> BLEU-4, ROUGE-1/2/L.
Metrics come from the pure functions of :mod:`ckf_dist.eval.metrics`, with the warm / cold / new user groups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from ckf_dist.config import ALL_TASKS, Config
from ckf_dist.eval.metrics import sample_groups, task_metrics
from ckf_dist.eval.selection import eval_cap, select
from ckf_dist.fsutil import atomic_write_text
from ckf_dist.rating_scale import DEFAULT_SCALE, RatingScale
from ckf_dist.data.collate import batch_to, target_token_ids



def _first_ids(tokenizer, words: Sequence[str]) -> list[int]:
    ids = [target_token_ids(tokenizer, w)[0] for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {list(words)} share a first token; the tokenizer cannot score them apart")
    return ids


def length_normalised(rows: list[list[tuple[float, int]]], power: float) -> list[list[float]]:
    """(total log-probability, tokens) per candidate -> total / tokens ** power (the topk score)."""
    return [[total / max(1, n) ** power for total, n in row] for row in rows]


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Evaluator:
    """Scores samples with a CKF model; one instance serves validation, `ckf eval` and `recommend`."""

    def __init__(self, model, collator, cfg: Config, titles: list[str], device: torch.device | str = "cpu",
                 scale: RatingScale = DEFAULT_SCALE):
        self.model, self.collator, self.cfg, self.titles = model, collator, cfg, titles
        self.device = torch.device(device)
        tok = collator.tok
        self.yes_id, self.no_id = _first_ids(tok, ["Yes", "No"])
        self.levels = torch.tensor(scale.levels, dtype=torch.float32, device=self.device)
        self.level_tokens = [target_token_ids(tok, a) for a in scale.answers]
        # one distinct token per level: the first answer token decides (no candidate pass needed)
        self.level_ids = ([t[0] for t in self.level_tokens] if all(len(t) == 1 for t in self.level_tokens)
                          and len({t[0] for t in self.level_tokens}) == len(self.level_tokens) else None)
        self.bs = cfg.eval.batch_size
        self._longest: Optional[int] = None

    def _batch(self, samples: list[dict]) -> dict:
        return batch_to(self.collator(samples), self.device)

    def _decode(self, ids: list[int]) -> str:
        return self.collator.tok.decode(ids, skip_special_tokens=True).strip()

    # -------------------------------------------------------------- per task
    def ctr(self, samples: list[dict]) -> list[float]:
        out: list[float] = []
        for chunk in _batches(samples, self.bs):
            out += self.model.yes_probability(self._batch(chunk), self.yes_id, self.no_id).float().tolist()
        return out

    def rating(self, samples: list[dict]) -> tuple[list[float], list[float]]:
        """(expected-value predictions, most-likely-level predictions) over the rating scale."""
        expected, greedy = [], []
        for chunk in _batches(samples, self.bs):
            batch = self._batch(chunk)
            if self.level_ids is not None:
                logits = self.model.answer_logits(batch)[:, self.level_ids].float()
            else:
                rows = self.model.candidate_logprobs(batch, [self.level_tokens] * len(chunk))
                logits = torch.tensor([[total for total, _ in row] for row in rows], dtype=torch.float32, device=self.device)
            p = torch.softmax(logits, dim=-1)
            expected += (p * self.levels).sum(-1).tolist()
            greedy += self.levels[logits.argmax(-1)].tolist()
        return expected, greedy

    def candidate_logprobs(self, samples: list[dict]) -> list[list[tuple[float, int]]]:
        """(total log-probability, tokens) of each candidate's title as the answer (title tokens +
        EOS), per sample, in candidate order."""
        out: list[list[tuple[float, int]]] = []
        for chunk in _batches(samples, self.bs):
            cands = [[target_token_ids(self.collator.tok, self.titles[c]) for c in s["candidates"]] for s in chunk]
            out += self.model.candidate_logprobs(self._batch(chunk), cands)
        return out

    def candidate_scores(self, samples: list[dict]) -> list[list[float]]:
        """Each candidate's score per sample (same order as candidates): the total log-probability
        of its title as the answer over n ** eval.candidate_length_power, n its tokens."""
        return length_normalised(self.candidate_logprobs(samples), self.cfg.eval.candidate_length_power)

    def generate(self, samples: list[dict], max_new_tokens: Optional[int] = None) -> list[str]:
        n = max_new_tokens or self.cfg.eval.max_new_tokens
        out: list[str] = []
        for chunk in _batches(samples, self.bs):
            out += [self._decode(ids) for ids in self.model.generate(self._batch(chunk), n)]
        return out

    def topk(self, samples: list[dict]) -> list[dict]:
        scores = self.candidate_scores(samples)
        texts = self.generate(samples, max_new_tokens=self.longest_title_tokens() + 2)
        preds = []
        for s, sc, text in zip(samples, scores, texts):
            names = [self.titles[c].strip().lower() for c in s["candidates"]]
            choice = names.index(text.lower()) if text.lower() in names else -1
            preds.append({"scores": sc, "choice": choice})
        return preds

    def longest_title_tokens(self) -> int:
        """Tokens of the catalogue's longest title: the greedy topk answer's budget (a property of the
        run, not of a batch, so any partition of the rows decodes the same)."""
        if self._longest is None:
            tok = self.collator.tok
            self._longest = max((len(tok(t, add_special_tokens=False)["input_ids"]) for t in self.titles), default=8)
        return self._longest

    # -------------------------------------------------------------- all tasks
    @torch.no_grad()
    def predict(self, task: str, samples: list[dict]) -> list:
        """Per-sample predictions of `task`, batch by batch (eval.batch_size): ctr P(Yes); rating and
        review_rating (expected value, most likely level); topk {"scores", "choice"}; explanation text.
        A batch's numbers depend on that batch only, so scoring the batches anywhere gives the same."""
        was_training = self.model.training
        self.model.eval()
        try:
            if task == "ctr":
                return self.ctr(samples)
            if task in ("rating", "review_rating"):
                return list(zip(*self.rating(samples)))
            if task == "topk":
                return self.topk(samples)
            if task == "explanation":
                return self.generate(samples)
            raise ValueError(f"unknown task {task!r}")
        finally:
            if was_training:
                self.model.train()

    def evaluate(self, samples: list[dict], progress: bool = True, during_training: bool = False,
                 predictions: Optional[str | Path] = None) -> dict[str, dict]:
        """Metrics per task on the rows :func:`eval_rows` keeps (caps: :func:`eval_cap`);
        `predictions`: also write every scored row's prediction there (:func:`write_predictions`)."""
        from tqdm import tqdm

        rows = eval_rows(samples, self.cfg, during_training)
        preds = {task: self.predict(task, chunk) for task, chunk in tqdm(rows.items(), desc="eval", disable=not progress, leave=False)}
        if predictions is None:
            return metrics_of(rows, preds, self.cfg.eval.ks)
        return record_and_score(rows, preds, self.cfg.eval.ks, predictions)


def eval_rows(samples: list[dict], cfg: Config, during_training: bool = False) -> dict[str, list[dict]]:
    """The rows each task is scored on, in ALL_TASKS order: :func:`select` under :func:`eval_cap`."""
    by_task: dict[str, list[dict]] = {}
    for s in samples:
        by_task.setdefault(s["task"], []).append(s)
    return {t: select(by_task[t], eval_cap(cfg.eval, t, during_training), cfg.seed) for t in ALL_TASKS if t in by_task}


def metrics_of(rows: dict[str, list[dict]], preds: dict[str, list], ks: Sequence[int]) -> dict[str, dict]:
    """Each task's metrics from its rows and their predictions (same order), as :meth:`Evaluator.predict` gives."""
    results: dict[str, dict] = {}
    for task, chunk in rows.items():
        p = preds[task]
        if task in ("rating", "review_rating"):
            m = task_metrics(task, chunk, [e for e, _ in p], ks)
            g = task_metrics(task, chunk, [g for _, g in p], ks)
            m["mae_greedy"], m["rmse_greedy"] = g["mae"], g["rmse"]
            results[task] = m
        else:
            results[task] = task_metrics(task, chunk, p, ks)
    return results


def prediction_records(rows: dict[str, list[dict]], preds: dict[str, list]) -> list[dict]:
    """One record per scored row: its task, key, user, user group, the truth the metrics compare
    against (ctr label, rating, the true candidate's index, the reference summary) and the model's
    prediction as the metrics read it (ctr P(Yes); rating expected value and greedy level; topk
    candidate scores and greedy choice, -1 = no exact title; explanation text). Rows in the
    metrics' order, so two runs of the same protocol and seed pair up by key for paired tests."""
    out = []
    for task, chunk in rows.items():
        for s, p, group in zip(chunk, preds[task], sample_groups(chunk)):
            rec = {"task": task, "key": s.get("key"), "user": s["user"], "group": group}
            if task == "ctr":
                rec.update(label=float(s["label"]), prediction=float(p))
            elif task in ("rating", "review_rating"):
                expected, greedy = p
                truth = s["label"] if s.get("label") is not None else s["target"]
                rec.update(label=float(truth), prediction=float(expected), greedy=float(greedy))
            elif task == "topk":
                rec.update(answer=int(s["answer"]), scores=[float(v) for v in p["scores"]],
                           choice=None if p.get("choice") is None else int(p["choice"]))
            else:
                rec.update(target=str(s["target"]), prediction=str(p))
            out.append(rec)
    return out


def write_predictions(rows: dict[str, list[dict]], preds: dict[str, list], path: str | Path) -> Path:
    """The records of :func:`prediction_records` as JSON lines, written atomically."""
    records = prediction_records(rows, preds)
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def record_and_score(rows: dict[str, list[dict]], preds: dict[str, list], ks: Sequence[int],
                     predictions: str | Path) -> dict[str, dict]:
    """What an evaluation of a split does with its predictions, on the local and the Ray Data path alike:
    write every scored row's prediction to `predictions` (:func:`write_predictions`), then return the
    metrics (:func:`metrics_of`)."""
    write_predictions(rows, preds, predictions)
    return metrics_of(rows, preds, ks)


HEADLINE = {
    "ctr": ["auc", "uauc"],
    "topk": ["hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"],
    "rating": ["mae", "rmse"],
    "review_rating": ["mae", "rmse"],
    "explanation": ["bleu4", "rouge1", "rouge2", "rougeL"],
}


def metrics_markdown(metrics: dict[str, dict], title: str = "") -> str:
    """One row per task and user group: the task's headline metrics and the sample count."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| task | users | metrics | n |", "|---|---|---|---|"]
    for task in ALL_TASKS:
        if task not in metrics:
            continue
        m = metrics[task]
        for group, g in (("all", m), *((name, m.get(name) or {}) for name in ("warm", "cold", "new"))):
            vals = [f"{k} {g[k]:.4f}" for k in HEADLINE[task] if g.get(k) is not None]
            lines.append(f"| {task} | {group} | {', '.join(vals) or '–'} | {g.get('n', 0)} |")
    return "\n".join(lines)


def write_metrics(metrics: dict[str, dict], path: str | Path) -> Path:
    """`metrics` as JSON at `path` and as a markdown table beside it (`.md`), both atomically."""
    p = Path(path)
    atomic_write_text(p, json.dumps(metrics, indent=2))
    atomic_write_text(p.with_suffix(".md"), metrics_markdown(metrics) + "\n")
    return p
