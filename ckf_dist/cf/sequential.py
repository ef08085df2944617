"""Sequential CF backbones: SASRec and DIN, trained in-system on the run's splits.

A sequential backbone has no user table: the vector of a user *for a row* is the model's encoding
of the row's history (the items the user interacted with before it, oldest first), so a user new
after the training cut has a vector as soon as it has a history, and the vector follows the
user's latest interactions. The item vectors are the model's item embeddings.

- **SASRec** (Kang and McAuley, ICDM 2018): item embeddings (scaled by sqrt(d)) plus learned
  positional embeddings (position 0 = the oldest item of the history), ``cf.sasrec_blocks``
  pre-norm blocks of causal self-attention (``cf.sasrec_heads`` heads) and a point-wise
  feed-forward network of width d, a final layer norm; the user vector is the output at the
  history's last position. score(h, i) = u(h) . e_i (the input and output item embeddings are
  shared, as in the paper). As in the paper, training reads each user's training sequence in
  windows of ``data.history_len`` items and uses the output at *every* position (position j
  predicts the interaction after it, from the window's items up to j): one pass gives L
  predictions, and a prediction at position j sees exactly what a row with those j + 1 history
  items sees at inference. A user's first interaction is predicted from an empty history (a learned
  vector).
- **DIN** (Zhou et al., KDD 2018): the user vector is the history pooled with weights from an
  activation unit a([e_j, e_t, e_j - e_t, e_j * e_t]) (4d -> 36 -> 1, PReLU; no softmax, as in
  the paper) against the target item t; score(h, t) = MLP([u, e_t, u * e_t]) (3d -> 200 -> 80 -> 1,
  PReLU). The paper's Dice activation is replaced by PReLU (its simpler variant); there are no
  user-profile features (the user is its history). The target of a row with several items (topk
  candidates) is the mean of their embeddings: one vector per row, independent of their order.

Training (``cf.loss`` does not apply: both always train this objective): binary cross-entropy on
every training interaction with a known label ``pos`` (explicit feedback keeps its dislikes, as
CoLLM trains its CF models) plus one uniformly sampled item the user never interacted with per
positive, labelled 0 and resampled each epoch (SASRec's own negative sampling), each with the
history before the interaction (at most ``data.history_len`` items, the rule of the prompts:
strictly earlier in time, a training row sees training rows only; SASRec's windows above). Dropout
``cf.seq_dropout`` on the input and the residual branches (NOTE: not on the attention weights: on
CPU a dropout mask cost as much as the attention itself);
Adam with ``cf.lr`` and coupled weight decay over the ``cf.weight_decays`` grid; early stopping on
the sampled validation AUC, like the BPR backbones (:mod:`ckf_dist.cf.fit`).

The exported tables (:class:`ckf_dist.cf.tables.CFTables`): ``item_emb`` = the item embeddings
(rows of items without training interactions zeroed), ``user_emb`` = each user's encoding of its
last training interactions (a static row for consumers without a row history, e.g. `ckf
recommend`'s retrieval; zero for users without training data; DIN pools it against the mean of
those items), and the encoder's weights (``encoder``, with ``meta["encoder"]`` its shape). Every
consumer with a row's history uses :func:`encode_rows` / :func:`score_rows` (CF baselines, BinLLM
codes) or the same encoder module inside the CKF model (:func:`build_encoder`).

This module knows SplitData; it must not import :mod:`ckf_dist.cf.tables` (which calls it): it
reads a tables object's ``item_emb``, ``encoder`` and ``meta`` only.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ckf_dist.cf.pairs import INIT_STD, PairData
from ckf_dist.config import CFConfig
from ckf_dist.data.table import SplitData

if TYPE_CHECKING:
    from ckf_dist.cf.tables import CFTables

SPLIT_LEVEL = {"train": 0, "valid": 1, "test": 2}
DIN_ATTENTION = 36
DIN_MLP = (200, 80)


# ---------------------------------------------------------------------------------------------- modules
class _SelfAttention(nn.Module):
    """Causal multi-head self-attention from Linear layers (each called, so ZeRO-3 gathers them)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, d] -> [B, H, d]; position j attends to positions <= j."""
        b, h, d = x.shape
        split = lambda t: t.view(b, h, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, h, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _SelfAttention(d, heads)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRecEncoder(nn.Module):
    """History -> user vector (module docstring). Shapes: e_hist [B, H, d] (oldest first, left-aligned),
    mask [B, H] bool (True = real item), target [B, d] (unused) -> [B, d]."""

    kind = "sasrec"

    def __init__(self, d: int, max_len: int, blocks: int = 2, heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, d)
        self.empty = nn.Embedding(1, d)
        """The vector of an empty history."""
        self.blocks = nn.ModuleList(_Block(d, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.scale = math.sqrt(d)

    def forward_all(self, e_hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The output at every position [B, H, d] (position j has read items 0..j)."""
        h = e_hist.shape[1]
        pos = torch.arange(h, device=mask.device).clamp_max(self.max_len - 1)
        m = mask.to(e_hist.dtype).unsqueeze(-1)
        x = self.drop(e_hist * self.scale + self.pos(pos).unsqueeze(0)) * m
        for blk in self.blocks:
            x = blk(x) * m  # padding sits after every real item: causal attention never reads it
        return self.norm(x)

    def empty_vector(self, b: int, device: torch.device) -> torch.Tensor:
        return self.empty(torch.zeros(b, dtype=torch.long, device=device))

    def forward(self, e_hist: torch.Tensor, mask: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        b = e_hist.shape[0]
        n = mask.long().sum(1)  # [B]
        x = self.forward_all(e_hist, mask)
        last = x[torch.arange(b, device=x.device), (n - 1).clamp_min(0)]  # [B, d]
        return torch.where((n > 0).unsqueeze(1), last, self.empty_vector(b, x.device))


class _ActivationUnit(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * d, DIN_ATTENTION), nn.PReLU(), nn.Linear(DIN_ATTENTION, 1))

    def forward(self, e_hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).expand_as(e_hist)
        return self.net(torch.cat([e_hist, t, e_hist - t, e_hist * t], -1)).squeeze(-1)  # [B, H]


class DINEncoder(nn.Module):
    """History pooled against a target (module docstring): e_hist [B, H, d], mask [B, H], target [B, d] -> [B, d]."""

    kind = "din"

    def __init__(self, d: int, max_len: int, blocks: int = 0, heads: int = 0, dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.unit = _ActivationUnit(d)

    def forward(self, e_hist: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.unit(e_hist, target) * mask.to(e_hist.dtype)
        return (w.unsqueeze(-1) * e_hist).sum(1)


class DINHead(nn.Module):
    """score = MLP([u, e_t, u * e_t]): u [N, d], e_t [N, d] -> [N]."""

    def __init__(self, d: int, dropout: float = 0.0):
        super().__init__()
        h1, h2 = DIN_MLP
        self.net = nn.Sequential(nn.Linear(3 * d, h1), nn.PReLU(), nn.Dropout(dropout), nn.Linear(h1, h2), nn.PReLU(),
                                 nn.Linear(h2, 1))

    def forward(self, u: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([u, e_t, u * e_t], -1)).squeeze(-1)


ENCODERS = {"sasrec": SASRecEncoder, "din": DINEncoder}


class SequentialCF(nn.Module):
    """Item embeddings [I, d] + encoder (+ DIN's scoring head): what trains."""

    def __init__(self, kind: str, num_items: int, d: int, max_len: int, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, generator: Optional[torch.Generator] = None):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"unknown sequential CF model {kind!r} ({', '.join(ENCODERS)})")
        self.kind = kind
        self.item_emb = nn.Embedding(num_items, d)
        nn.init.normal_(self.item_emb.weight, std=INIT_STD, generator=generator)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[]):  # the other layers' default init, seeded, global RNG untouched
            if seed is not None:
                torch.manual_seed(seed)
            self.encoder = ENCODERS[kind](d, max_len, blocks, heads, dropout)
            self.head = DINHead(d, dropout) if kind == "din" else None

    def user(self, hist: torch.Tensor, mask: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """hist [B, H] ids, mask [B, H], target [B, d] (DIN) -> user vectors [B, d]."""
        return self.encoder(self.item_emb(hist), mask, target)

    def score_vectors(self, u: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """u [N, d], e_t [N, d] -> [N]."""
        return self.head(u, e_t) if self.head is not None else (u * e_t).sum(-1)

    def forward(self, hist: torch.Tensor, mask: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores [B] of items [B] after histories hist [B, H]."""
        e_t = self.item_emb(items)
        return self.score_vectors(self.user(hist, mask, e_t), e_t)


# ---------------------------------------------------------------------------------------------- histories
def row_histories(sd: SplitData, history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``sd.inter`` (by position): the items of the last `history_len` interactions
    strictly before it in time that it may see (a row of split S sees rows of splits up to S),
    oldest first -> (ids [N, L] int64 left-aligned and 0-padded, lengths [N] int64)."""
    inter = sd.inter
    n = len(inter)
    out = np.zeros((n, max(1, history_len)), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    u = inter["u"].to_numpy(np.int64)
    ts = inter["timestamp"].to_numpy(np.int64)
    items = inter["i"].to_numpy(np.int64)
    level = np.array([SPLIT_LEVEL.get(s, 2) for s in inter["split"].astype(str)], dtype=np.int64)
    order = np.lexsort((np.arange(n), ts, u))
    bounds = np.r_[0, np.flatnonzero(np.diff(u[order])) + 1, n]
    for s, e in zip(bounds[:-1], bounds[1:]):
        rows = order[s:e]
        t_u, lv = ts[rows], level[rows]
        cut = np.searchsorted(t_u, t_u, side="left")  # rows strictly earlier in time
        for k, row in enumerate(rows):
            ok = np.flatnonzero(lv[: cut[k]] <= lv[k])[-history_len:]
            lengths[row] = len(ok)
            out[row, : len(ok)] = items[rows[ok]]
    return out, lengths


def last_train_histories(sd: SplitData, history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: the items of its last `history_len` training interactions, oldest first ->
    (ids [U, L], lengths [U]); users without training data have length 0."""
    train = sd.part("train")
    out = np.zeros((sd.num_users, max(1, history_len)), dtype=np.int64)
    lengths = np.zeros(sd.num_users, dtype=np.int64)
    order = np.lexsort((np.arange(len(train)), train["timestamp"].to_numpy(), train["u"].to_numpy()))
    u = train["u"].to_numpy(np.int64)[order]
    it = train["i"].to_numpy(np.int64)[order]
    for user in np.unique(u):
        seq = it[u == user][-history_len:]
        out[user, : len(seq)] = seq
        lengths[user] = len(seq)
    return out, lengths


def _mask(lengths: np.ndarray, width: int) -> torch.Tensor:
    return torch.from_numpy(np.arange(width)[None, :] < lengths[:, None])


# ---------------------------------------------------------------------------------------------- training
def fit_sequential(kind: str, sd: SplitData, data: PairData, cfg: CFConfig, wd: float, seed: int, history_len: int,
                   hist: tuple[np.ndarray, np.ndarray]) -> tuple[SequentialCF, dict]:
    """Train one weight decay with early stopping (module docstring); returns the best-epoch model
    and its record (weight_decay, valid_score, best_epoch, epochs_run, stopped_early, seconds, history).
    `data`: the BPR view of `sd` (negatives, validation pairs); `hist`: :func:`row_histories`.
    Dropout draws from torch's global RNG, which :func:`ckf_dist.cf.fit.train_cf` seeds."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    model = SequentialCF(kind, sd.num_items, cfg.dim, history_len, cfg.sasrec_blocks, cfg.sasrec_heads, cfg.seq_dropout, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=wd)
    ids, lengths = hist
    pos_of = {label: k for k, label in enumerate(sd.inter.index)}
    train = sd.part("train")
    y_all = train["pos"].to_numpy(np.float64)
    known = ~np.isnan(y_all)
    rows = np.array([pos_of[x] for x in train.index[known]], dtype=np.int64)
    labels = (y_all[known] >= 0.5).astype(np.float32)
    users = train["u"].to_numpy(np.int64)[known]
    items = train["i"].to_numpy(np.int64)[known]
    positives = np.flatnonzero(labels >= 0.5)
    valid_rows = np.array([pos_of[x] for x in data.valid_index], dtype=np.int64)
    rng = np.random.default_rng([seed, 31])
    windows = _windows(sd, history_len) if kind == "sasrec" else None
    best, best_epoch, best_state, bad, epoch, history = -math.inf, 0, None, 0, 0, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if windows is not None:
            train_loss = _sasrec_epoch(model, opt, windows, data, rng, gen, cfg.batch_size)
        else:
            neg = data.sample_negatives(users[positives], rng)
            r = np.concatenate([rows, rows[positives]])
            it = np.concatenate([items, neg])
            y = torch.from_numpy(np.concatenate([labels, np.zeros(len(neg), np.float32)]))
            perm = torch.randperm(len(r), generator=gen).numpy()
            total = 0.0
            for start in range(0, len(r), cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                h = torch.from_numpy(ids[r[idx]])
                logits = model(h, _mask(lengths[r[idx]], h.shape[1]), torch.from_numpy(it[idx]))
                loss = F.binary_cross_entropy_with_logits(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            train_loss = total / len(r)
        rec = {"epoch": epoch, "train_loss": train_loss, "valid": None}
        history.append(rec)
        if not data.has_valid:
            continue
        score = rec["valid"] = _valid_auc(model, ids[valid_rows], lengths[valid_rows], data.valid_i, data.valid_neg)
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"weight_decay": wd, "valid_score": best if best_state is not None else None,
                   "best_epoch": best_epoch if best_state is not None else epoch, "epochs_run": epoch,
                   "stopped_early": epoch < cfg.epochs, "seconds": round(time.perf_counter() - t0, 3), "history": history}


class _Windows:
    """SASRec's training windows (module docstring): inputs [W, L] ids with mask [W, L]; the target
    of each position [W, L] with its label, user and validity; first: (users, items, labels) of each
    user's first training interaction (predicted from an empty history)."""

    def __init__(self, inputs, in_mask, targets, labels, users, valid, first):
        self.inputs, self.in_mask, self.targets, self.labels, self.users, self.valid = inputs, in_mask, targets, labels, users, valid
        self.first = first


def _windows(sd: SplitData, history_len: int) -> _Windows:
    train = sd.part("train")
    y = train["pos"].to_numpy(np.float64)
    order = np.lexsort((np.arange(len(train)), train["timestamp"].to_numpy(), train["u"].to_numpy()))
    u = train["u"].to_numpy(np.int64)[order]
    it = train["i"].to_numpy(np.int64)[order]
    y = y[order]
    L = max(1, history_len)
    ins, tgts, labs, usr, first = [], [], [], [], ([], [], [])
    bounds = np.r_[0, np.flatnonzero(np.diff(u)) + 1, len(u)]
    for s, e in zip(bounds[:-1], bounds[1:]):
        seq, lab = it[s:e], y[s:e]
        if not np.isnan(lab[0]):
            first[0].append(u[s]), first[1].append(seq[0]), first[2].append(float(lab[0] >= 0.5))
        for a in range(1, len(seq), L):  # targets a .. a + L - 1, inputs a - 1 .. a + L - 2
            t = np.arange(a, min(a + L, len(seq)))
            ins.append(seq[t - 1])
            tgts.append(seq[t])
            labs.append(lab[t])
            usr.append(u[s])
    w = len(ins)
    inputs = np.zeros((w, L), np.int64)
    targets = np.zeros((w, L), np.int64)
    labels = np.full((w, L), np.nan)
    for k in range(w):
        n = len(ins[k])
        inputs[k, :n], targets[k, :n], labels[k, :n] = ins[k], tgts[k], labs[k]
    in_mask = np.arange(L)[None, :] < np.array([len(x) for x in ins])[:, None] if w else np.zeros((0, L), bool)
    valid = in_mask & ~np.isnan(labels)
    users = np.repeat(np.array(usr, dtype=np.int64)[:, None], L, 1) if w else np.zeros((0, L), np.int64)
    return _Windows(inputs, in_mask, targets, np.nan_to_num(labels).astype(np.float32), users, valid,
                    tuple(np.array(x) for x in first))


def _sasrec_epoch(model: SequentialCF, opt, win: _Windows, data: PairData, rng, gen, batch_size: int) -> float:
    """One epoch over the windows; returns the mean loss per prediction."""
    positive = win.valid & (win.labels >= 0.5)
    neg = np.zeros_like(win.targets)
    neg[positive] = data.sample_negatives(win.users[positive], rng)
    fu, fi, fl = win.first
    f_pos = fl >= 0.5
    f_neg = data.sample_negatives(fu[f_pos], rng) if f_pos.any() else np.zeros(0, np.int64)
    per = max(1, batch_size // win.inputs.shape[1])
    perm = torch.randperm(len(win.inputs), generator=gen).numpy()
    total, count = 0.0, 0
    for start in range(0, len(perm), per):
        idx = perm[start : start + per]
        out = model.encoder.forward_all(model.item_emb(torch.from_numpy(win.inputs[idx])), torch.from_numpy(win.in_mask[idx]))
        sel = torch.from_numpy(win.valid[idx])
        u = out[sel]  # [n, d]
        logits = (u * model.item_emb(torch.from_numpy(win.targets[idx])[sel])).sum(-1)
        y = torch.from_numpy(win.labels[idx])[sel]
        pos = torch.from_numpy(positive[idx])[sel]
        neg_logits = (u[pos] * model.item_emb(torch.from_numpy(neg[idx])[sel][pos])).sum(-1)
        logits, y = torch.cat([logits, neg_logits]), torch.cat([y, torch.zeros_like(neg_logits)])
        if start == 0 and len(fu):  # users' first interactions, from the empty history, once per epoch
            e = model.encoder.empty_vector(len(fu), out.device)
            e_pos = (e * model.item_emb(torch.from_numpy(fi))).sum(-1)
            e_neg = (e[torch.from_numpy(f_pos)] * model.item_emb(torch.from_numpy(f_neg))).sum(-1)
            logits = torch.cat([logits, e_pos, e_neg])
            y = torch.cat([y, torch.from_numpy(fl.astype(np.float32)), torch.zeros_like(e_neg)])
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(1, count)


@torch.no_grad()
def _scores(model: SequentialCF, ids: np.ndarray, lengths: np.ndarray, items: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Scores [n, C] of items [n, C] after histories ids [n, L] (the user encoded once per row for SASRec)."""
    model.eval()
    n, c = items.shape
    out = np.empty((n, c), dtype=np.float64)
    rows_per = max(1, chunk // c)
    for s in range(0, n, rows_per):
        h = torch.from_numpy(ids[s : s + rows_per])
        m = _mask(lengths[s : s + rows_per], h.shape[1])
        it = torch.from_numpy(items[s : s + rows_per])  # [b, C]
        e_t = model.item_emb(it)  # [b, C, d]
        b = it.shape[0]
        if model.head is None:
            u = model.user(h, m)  # [b, d]
            out[s : s + b] = torch.einsum("bd,bcd->bc", u, e_t).double().numpy()
        else:
            hh, mm = h.repeat_interleave(c, 0), m.repeat_interleave(c, 0)
            et = e_t.reshape(b * c, -1)
            u = model.user(hh, mm, et)
            out[s : s + b] = model.score_vectors(u, et).view(b, c).double().numpy()
    return out


def _valid_auc(model: SequentialCF, ids: np.ndarray, lengths: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    s = _scores(model, ids, lengths, np.concatenate([pos[:, None], neg], 1))
    s_pos, s_neg = s[:, :1], s[:, 1:]
    return float(((s_neg < s_pos) + 0.5 * (s_neg == s_pos)).mean())


@torch.no_grad()
def export_sequential(model: SequentialCF, sd: SplitData, data: PairData, history_len: int, cfg: CFConfig) -> dict[str, Any]:
    """The tables of a trained model (module docstring): user_emb [U, d], item_emb [I, d], encoder, encoder_meta."""
    model.eval()
    item = model.item_emb.weight.detach().clone()
    trained_items = np.bincount(sd.part("train")["i"].to_numpy(np.int64), minlength=sd.num_items) > 0
    item[torch.from_numpy(~trained_items)] = 0.0
    ids, lengths = last_train_histories(sd, history_len)
    h, m = torch.from_numpy(ids), _mask(lengths, ids.shape[1])
    e_hist = model.item_emb(h)
    target = (e_hist * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
    users = model.encoder(e_hist, m, target)
    users[torch.from_numpy(lengths == 0)] = 0.0
    state = {k: v.detach().numpy().astype(np.float32).copy() for k, v in model.state_dict().items() if not k.startswith("item_emb.")}
    meta = {"kind": model.kind, "dim": int(item.shape[1]), "max_len": history_len, "blocks": cfg.sasrec_blocks,
            "heads": cfg.sasrec_heads}
    return {"user_emb": users.numpy().copy(), "item_emb": item.numpy(), "encoder": state, "encoder_meta": meta}


# ---------------------------------------------------------------------------------------------- consumers
def build_model(tables: "CFTables") -> SequentialCF:
    """The trained model of sequential `tables` (dropout off, frozen), item embeddings from the tables."""
    meta = tables.meta["encoder"]
    model = SequentialCF(meta["kind"], tables.num_items, meta["dim"], meta["max_len"], meta.get("blocks", 2),
                         meta.get("heads", 1), dropout=0.0)
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in tables.encoder.items()}
    state["item_emb.weight"] = torch.from_numpy(np.asarray(tables.item_emb, dtype=np.float32))
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval()


def build_encoder(tables: "CFTables") -> nn.Module:
    """The frozen encoder of sequential `tables` (what the CKF model calls per row): e_hist [B, H, d],
    mask [B, H], target [B, d] -> [B, d]."""
    return build_model(tables).encoder


def _pad(histories: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `width` items of each history, left-aligned -> (ids [n, width], lengths [n])."""
    ids = np.zeros((len(histories), max(1, width)), dtype=np.int64)
    lengths = np.zeros(len(histories), dtype=np.int64)
    for r, h in enumerate(histories):
        h = list(h)[-width:] if width > 0 else []
        ids[r, : len(h)] = h
        lengths[r] = len(h)
    return ids, lengths


def _targets(model: SequentialCF, targets: Optional[Sequence[Sequence[int]]], n: int) -> Optional[torch.Tensor]:
    """Per row: the mean embedding of its items (DIN's target), or None."""
    if model.head is None or targets is None:
        return None
    out = torch.zeros(n, model.item_emb.embedding_dim)
    for r, t in enumerate(targets):
        if len(t):
            out[r] = model.item_emb(torch.as_tensor(list(t), dtype=torch.long)).mean(0)
    return out


@torch.no_grad()
def encode_rows(tables: "CFTables", histories: Sequence[Sequence[int]], targets: Optional[Sequence[Sequence[int]]] = None,
                model: Optional[SequentialCF] = None) -> np.ndarray:
    """[n, d] float64 user vectors of rows with these histories (oldest first) and items (DIN's target)."""
    model = model or build_model(tables)
    ids, lengths = _pad(histories, model.encoder.max_len)
    h = torch.from_numpy(ids)
    m = _mask(lengths, h.shape[1])
    t = _targets(model, targets, len(histories))
    if t is None and model.head is not None:  # DIN without a target: pool against the history's own mean
        e = model.item_emb(h)
        t = (e * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
    return model.user(h, m, t).double().numpy()


@torch.no_grad()
def score_rows(tables: "CFTables", histories: Sequence[Sequence[int]], items: Any, model: Optional[SequentialCF] = None) -> np.ndarray:
    """The model's scores of items [n] (one per row) or [n, C] after each row's history, float64."""
    model = model or build_model(tables)
    it = np.asarray(items, dtype=np.int64)
    flat = it.ndim == 1
    it2 = it[:, None] if flat else it
    ids, lengths = _pad(histories, model.encoder.max_len)
    s = _scores(model, ids, lengths, it2)
    return s[:, 0] if flat else s
