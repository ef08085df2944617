"""Which evaluation rows are scored: one rule for the LLM and every baseline, so a table's rows
are all computed on exactly the same samples."""

from __future__ import annotations

import random


def eval_cap(eval_cfg, task: str, during_training: bool = False) -> int:
    """Samples of `task` scored per evaluation (0 = all): eval.task_caps, else
    eval.max_samples_per_task; validations during training use eval.valid_max_samples_per_task."""
    if during_training:
        return eval_cfg.valid_max_samples_per_task
    return eval_cfg.task_caps.get(task, eval_cfg.max_samples_per_task)


def select(samples: list[dict], cap: int, seed: int) -> list[dict]:
    """At most `cap` samples (0 = all), a seeded uniform draw of *units*: samples of one user with the
    same history (a sampled-ctr positive and its paired negative) form one unit and stay together,
    so UAUC stays defined; rows of many users are drawn rather than all rows of a few users."""
    ordered = sorted(samples, key=lambda s: s.get("key", ""))
    if not cap or len(ordered) <= cap:
        return ordered
    units: dict[tuple, list[dict]] = {}
    for s in ordered:
        units.setdefault((int(s["user"]), tuple(s.get("history") or ())), []).append(s)
    keys = list(units)
    random.Random(seed).shuffle(keys)
    out: list[dict] = []
    for k in keys:
        if len(out) + len(units[k]) > cap and out:
            continue
        out += units[k]
        if len(out) >= cap:
            break
    return sorted(out, key=lambda s: s.get("key", ""))
