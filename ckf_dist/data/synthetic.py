"""Seeded synthetic recommendation data: the embedded default data set (no download needed).

A small latent-factor world that every task can learn from:

- each item has a dominant and a secondary latent factor (one-hot bumps plus noise), each user
  one or two preferred factors; each factor is a *topic* with its own words;
- users pick items with probability rising with affinity ``u·v`` plus an item popularity
  bias (so CF has signal and there is a long tail);
- ratings 1..5 come from the standardised affinity plus noise;
- titles are readable word combinations keyed to the item's two factors ("Cosmic Reef Tales"),
  unique per item;
- review text and summary use words of the item's factors, of the user's favourite factor and
  of the rating's sentiment, so review_rating and explanation are learnable from text.

Same (config, seed) -> identical data; the whole default world builds in well under a second.
With more than ``len(TOPICS)`` latent factors, factors share topic words cyclically. Users are
generated in blocks of ``BLOCK_USERS``, each from its own seeded stream (the affinity is
standardised with its exact mean and deviation over all user-item pairs, computed from the
factors' Gram matrices), so any block can be generated alone, by any worker, with the same result:
memory grows with the block, not with the number of users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from ckf_dist.config import SyntheticConfig
from ckf_dist.data.errors import BadRecords
from ckf_dist.data.source import ReadTask, Source, read_all
from ckf_dist.data.table import RecData, items_frame

# name, title nouns, title adjectives, review words
TOPICS: list[tuple[str, list[str], list[str], list[str]]] = [
    ("space", ["Galaxy", "Orbit", "Nebula", "Comet"], ["Cosmic", "Stellar", "Lunar"],
     ["spaceship", "planets", "astronauts", "stars", "rockets"]),
    ("ocean", ["Reef", "Tide", "Harbor", "Lagoon"], ["Coastal", "Tidal", "Marine"],
     ["waves", "sailors", "coral", "seaside", "currents"]),
    ("mystery", ["Cipher", "Alibi", "Clue", "Shadow"], ["Hidden", "Secret", "Cryptic"],
     ["detective", "suspense", "clues", "twists", "puzzles"]),
    ("romance", ["Heart", "Kiss", "Promise", "Letter"], ["Tender", "Sweet", "Romantic"],
     ["love", "couple", "romance", "wedding", "longing"]),
    ("war", ["Battle", "Siege", "Front", "Legion"], ["Brave", "Iron", "Fierce"],
     ["soldiers", "battles", "combat", "courage", "generals"]),
    ("comedy", ["Jester", "Prank", "Caper", "Giggle"], ["Zany", "Silly", "Witty"],
     ["jokes", "laughs", "gags", "humor", "banter"]),
    ("horror", ["Crypt", "Phantom", "Curse", "Haunt"], ["Dark", "Eerie", "Grim"],
     ["ghosts", "monsters", "screams", "fear", "darkness"]),
    ("nature", ["Forest", "Meadow", "Canyon", "Willow"], ["Wild", "Green", "Quiet"],
     ["wildlife", "landscapes", "forests", "rivers", "scenery"]),
    ("music", ["Melody", "Rhythm", "Chorus", "Ballad"], ["Lyrical", "Jazzy", "Soulful"],
     ["songs", "melodies", "singing", "concerts", "guitars"]),
    ("sports", ["Champion", "Goal", "Racer", "Arena"], ["Swift", "Mighty", "Golden"],
     ["athletes", "victory", "matches", "training", "teamwork"]),
    ("history", ["Empire", "Dynasty", "Relic", "Crown"], ["Ancient", "Royal", "Noble"],
     ["kings", "empires", "castles", "legacy", "battlements"]),
    ("tech", ["Circuit", "Robot", "Signal", "Matrix"], ["Digital", "Electric", "Quantum"],
     ["robots", "gadgets", "computers", "hackers", "algorithms"]),
]
FORMS = ["Tales", "Chronicles", "Saga", "Story", "Journey", "Diaries", "Quest", "Files", "Legacy", "Odyssey"]
NUMERALS = ["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"]

# Per rating 1..5: review openers, the verdict adjective, closers, summary adjectives.
OPENERS = {
    1: ["Truly awful.", "A complete waste of time.", "I hated this one."],
    2: ["Rather disappointing.", "Not really for me.", "I expected much more."],
    3: ["It was okay.", "Mixed feelings here.", "An average experience."],
    4: ["Really enjoyed it.", "A solid pick.", "Pleasantly surprised."],
    5: ["Absolutely loved it!", "A true masterpiece!", "Simply brilliant!"],
}
VERDICT = {1: "dreadful", 2: "dull", 3: "passable", 4: "engaging", 5: "wonderful"}
CLOSERS = {
    1: ["Avoid it.", "Never again."],
    2: ["Hard to recommend.", "Skip unless curious."],
    3: ["Fine for a quiet evening.", "Worth a look if bored."],
    4: ["Would recommend.", "Worth your time."],
    5: ["Highly recommended.", "An instant favourite."],
}
SUMMARY_ADJ = {1: ["Terrible", "Awful"], 2: ["Disappointing", "Weak"], 3: ["Decent", "Okay"],
               4: ["Good", "Enjoyable"], 5: ["Excellent", "Amazing"]}


def topic(k: int) -> tuple[str, list[str], list[str], list[str]]:
    """The topic (name, nouns, adjectives, review words) of latent factor k."""
    return TOPICS[k % len(TOPICS)]


@dataclass
class SyntheticWorld:
    """The hidden truth behind a synthetic data set (tests and diagnostics read it)."""

    user_factors: np.ndarray
    """[num_users, latent_dim] float64."""
    item_factors: np.ndarray
    """[num_items, latent_dim] float64."""
    user_topics: np.ndarray
    """[num_users, 2] int64: the user's first and second preferred factor."""
    item_topics: np.ndarray
    """[num_items, 2] int64: the item's dominant and secondary factor."""
    item_bias: np.ndarray
    """[num_items] float64 popularity bias of the choice model."""


def build_world(cfg: SyntheticConfig, seed: int) -> SyntheticWorld:
    """Latent factors for users and items, drawn from `seed`."""
    rng = np.random.default_rng([seed, 7301])
    k = max(1, cfg.latent_dim)

    def factors(n: int, main: float, second: float) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, k, size=n)
        other = (first + rng.integers(1, k, size=n)) % k if k > 1 else first
        f = 0.25 * rng.standard_normal((n, k))
        f[np.arange(n), first] += main
        f[np.arange(n), other] += second
        return f, np.stack([first, other], axis=1).astype(np.int64)

    uf, ut = factors(cfg.num_users, 1.0, 0.5)
    vf, vt = factors(cfg.num_items, 1.2, 0.6)
    bias = 0.6 * rng.standard_normal(cfg.num_items)
    return SyntheticWorld(uf, vf, ut, vt, bias)


def _titles(world: SyntheticWorld, rng: np.random.Generator) -> list[str]:
    """Readable, unique titles: '<adjective of factor 2> <noun of factor 1> <form>'."""
    seen: set[str] = set()
    out = []
    for d1, d2 in world.item_topics:
        nouns, adjs = topic(int(d1))[1], topic(int(d2))[2]
        title = ""
        for _ in range(30):
            cand = f"{adjs[rng.integers(len(adjs))]} {nouns[rng.integers(len(nouns))]} {FORMS[rng.integers(len(FORMS))]}"
            if cand not in seen:
                title = cand
                break
        if not title:
            base = f"{adjs[0]} {nouns[0]} {FORMS[0]}"
            title = next((f"{base} {r}" for r in NUMERALS if f"{base} {r}" not in seen), "")
            n = len(NUMERALS) + 2
            while not title or title in seen:
                title, n = f"{base} Part {n}", n + 1
        seen.add(title)
        out.append(title)
    return out


def _texts(rating: int, item_topics: np.ndarray, user_topic: int, rng: np.random.Generator) -> tuple[str, str]:
    """A short review and summary whose words follow the item's factors, the user's taste and the rating."""
    w1 = topic(int(item_topics[0]))[3][rng.integers(5)]
    w2 = topic(int(item_topics[1]))[3][rng.integers(5)]
    wu = topic(user_topic)[3][rng.integers(5)]
    review = (
        f"{OPENERS[rating][rng.integers(3)]} The {w1} and the {w2} felt {VERDICT[rating]}. "
        f"As someone who likes {wu}, {CLOSERS[rating][rng.integers(2)].lower()}"
    )
    adj = topic(int(item_topics[0]))[2][rng.integers(3)].lower()
    summary = f"{SUMMARY_ADJ[rating][rng.integers(2)]} {adj} {w1}"
    return review, summary


BLOCK_USERS = 1000
"""Users per generation block (a constant of the data set: it fixes each block's random stream)."""


def num_blocks(cfg: SyntheticConfig) -> int:
    return max(1, -(-cfg.num_users // BLOCK_USERS))


def item_titles(world: SyntheticWorld, seed: int) -> list[str]:
    return _titles(world, np.random.default_rng([seed, 7304]))


def _affinity_moments(world: SyntheticWorld) -> tuple[float, float]:
    """Mean and standard deviation of u.v over every user-item pair, without the [users, items] matrix."""
    uf, vf = world.user_factors, world.item_factors
    pairs = uf.shape[0] * vf.shape[0]
    mean = float(uf.sum(0) @ vf.sum(0)) / pairs
    second = float(np.sum((uf.T @ uf) * (vf.T @ vf))) / pairs
    return mean, math.sqrt(max(second - mean * mean, 0.0))


class SyntheticGenerator:
    """The synthetic data set, block by block (block b = users b*BLOCK_USERS ...)."""

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.world = build_world(cfg, seed)
        self.titles = item_titles(self.world, seed)
        self.moments = _affinity_moments(self.world)

    def block(self, b: int) -> dict[str, list]:
        """Columns user, item, timestamp, rating, review, summary of block b's interactions, users in
        order and each user's interactions in time order."""
        cfg, world = self.cfg, self.world
        lo, hi = b * BLOCK_USERS, min((b + 1) * BLOCK_USERS, cfg.num_users)
        n, n_items = hi - lo, cfg.num_items
        rng = np.random.default_rng([self.seed, 7302, b])
        mean, std = self.moments
        z = (world.user_factors[lo:hi] @ world.item_factors.T - mean) / (std + 1e-9)  # [n, items]
        logits = z + world.item_bias[None, :]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        counts = np.maximum(8, rng.poisson(cfg.interactions_per_user, size=n))
        # A seeded share of users has a short history (4-7 interactions -> at most 5 in train: cold).
        short = rng.random(n) < cfg.cold_user_frac
        counts = np.minimum(np.where(short, rng.integers(4, 8, size=n), counts), n_items)
        cols: dict[str, list] = {k: [] for k in ("user", "item", "timestamp", "rating", "review", "summary")}
        base = 1_600_000_000
        for k in range(n):
            u = lo + k
            chosen = rng.choice(n_items, size=int(counts[k]), replace=False, p=probs[k])
            start = base + int(rng.integers(0, 365 * 86400))
            times = start + np.cumsum(rng.integers(600, 4 * 86400, size=len(chosen)))
            noise = 0.5 * rng.standard_normal(len(chosen))
            r = np.clip(np.rint(2.4 + 1.1 * z[k, chosen] + noise), 1, 5).astype(int)
            for i, t, rr in zip(chosen, times, r):
                review, summary = _texts(int(rr), world.item_topics[i], int(world.user_topics[u, 0]), rng)
                cols["user"].append(f"user{u}")
                cols["item"].append(f"item{int(i)}")
                cols["timestamp"].append(int(t))
                cols["rating"].append(float(rr))
                cols["review"].append(review)
                cols["summary"].append(summary)
        return cols

    def items(self) -> pd.DataFrame:
        """Every item with its title (the item file of the synthetic data set)."""
        return items_frame([f"item{k}" for k in range(self.cfg.num_items)], self.titles)


ROW_BYTES = 330
"""About the bytes of one synthetic interaction once read (review and summary text): sizes the read tasks."""


class SyntheticSource(Source):
    """The generator as a source: each read task generates a run of user blocks."""

    name = "synthetic"

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self._gen: Optional[SyntheticGenerator] = None

    @property
    def gen(self) -> SyntheticGenerator:
        if self._gen is None:
            self._gen = SyntheticGenerator(self.cfg, self.seed)
        return self._gen

    def __getstate__(self):  # workers rebuild the (seeded) world instead of receiving it
        return {"cfg": self.cfg, "seed": self.seed, "_gen": None}

    def plan(self, block_bytes: int, run=None) -> list[ReadTask]:
        per_task = max(1, block_bytes // (ROW_BYTES * max(1, self.cfg.interactions_per_user) * BLOCK_USERS))
        n = num_blocks(self.cfg)
        return [ReadTask(k, part=(b, min(b + per_task, n))) for k, b in enumerate(range(0, n, per_task))]

    def size_hint(self, tasks: list[ReadTask]) -> int:
        return self.cfg.num_users * self.cfg.interactions_per_user * ROW_BYTES

    def read(self, task: ReadTask, bad: BadRecords) -> Iterator[dict[str, list]]:
        for b in range(*task.part):
            cols = self.gen.block(b)
            n = len(cols["user"])
            nan = [float("nan")] * n
            yield {**cols, "label": nan, "split": [""] * n, "order": [(b << 32) + k for k in range(n)]}

    def items(self, used: set[str], bad: BadRecords) -> pd.DataFrame:
        ids = sorted(used, key=lambda s: int(s[4:]))
        return items_frame(ids, [self.gen.titles[int(s[4:])] for s in ids])

    def item_titles(self) -> Optional[dict[str, tuple[str, str]]]:
        return {f"item{k}": (t, "") for k, t in enumerate(self.gen.titles)}


def generate_synthetic(cfg: SyntheticConfig, seed: int) -> RecData:
    """A deterministic RecData with ratings, timestamps, reviews, summaries and item titles."""
    return read_all(SyntheticSource(cfg, seed), "error")
