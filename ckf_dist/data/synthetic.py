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
With more than ``len(TOPICS)`` latent factors, factors share topic words cyclically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckf_dist.config import SyntheticConfig
from ckf_dist.data.table import RecData, interactions_frame, items_frame

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


def generate_synthetic(cfg: SyntheticConfig, seed: int) -> RecData:
    """A deterministic RecData with ratings, timestamps, reviews, summaries and item titles."""
    world = build_world(cfg, seed)
    rng = np.random.default_rng([seed, 7302])
    n_users, n_items = cfg.num_users, cfg.num_items
    aff = world.user_factors @ world.item_factors.T  # [users, items]
    z = (aff - aff.mean()) / (aff.std() + 1e-9)
    logits = z + world.item_bias[None, :]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    counts = np.maximum(8, rng.poisson(cfg.interactions_per_user, size=n_users))
    # A seeded share of users has a short history (4-7 interactions -> at most 5 in train: cold).
    short = rng.random(n_users) < cfg.cold_user_frac
    counts = np.minimum(np.where(short, rng.integers(4, 8, size=n_users), counts), n_items)

    titles = _titles(world, rng)
    users, items, stamps, ratings, reviews, summaries = [], [], [], [], [], []
    base = 1_600_000_000
    for u in range(n_users):
        chosen = rng.choice(n_items, size=int(counts[u]), replace=False, p=probs[u])
        start = base + int(rng.integers(0, 365 * 86400))
        times = start + np.cumsum(rng.integers(600, 4 * 86400, size=len(chosen)))
        noise = 0.5 * rng.standard_normal(len(chosen))
        r = np.clip(np.rint(2.4 + 1.1 * z[u, chosen] + noise), 1, 5).astype(int)
        for i, t, rr in zip(chosen, times, r):
            review, summary = _texts(int(rr), world.item_topics[i], int(world.user_topics[u, 0]), rng)
            users.append(f"user{u}")
            items.append(f"item{int(i)}")
            stamps.append(int(t))
            ratings.append(float(rr))
            reviews.append(review)
            summaries.append(summary)
    inter = interactions_frame(users, items, stamps, rating=ratings, review=reviews, summary=summaries)
    used = sorted(set(items), key=lambda s: int(s[4:]))
    item_frame = items_frame(used, [titles[int(s[4:])] for s in used])
    return RecData(name="synthetic", interactions=inter, items=item_frame)
