"""The current GroupLens releases (data.format=movielens-latest): half-star ratings 0.5..5.0 load,
the rating scale comes from the data, and a small folder in that format prepares, trains and
evaluates with rating answers on the half-star levels."""

import json

import numpy as np
import pytest

from ckf_dist.cli import main
from ckf_dist.config import ConfigError, load_config
from ckf_dist.data.errors import DataError
from ckf_dist.data.loaders import load_dataset
from ckf_dist.data.movielens import load_movielens_latest
from ckf_dist.data.shards import read_split
from ckf_dist.rating_scale import RatingScale

HALF = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


def write_latest(folder, users=40, items=30, per_user=12, seed=0, extra_rating_lines=()):
    """ratings.csv + movies.csv as GroupLens ships them (headers, quoted titles with commas)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    movies = ["movieId,title,genres"]
    for i in range(items):
        genres = "(no genres listed)" if i == 0 else "|".join(["Comedy", "Drama", "Sci-Fi"][: 1 + i % 3])
        movies.append(f'{i + 1},"Movie {i}, The ({1990 + i})",{genres}')
    ratings = ["userId,movieId,rating,timestamp"]
    for u in range(users):
        for t, i in enumerate(rng.choice(items, size=per_user, replace=False)):
            ratings.append(f"{u + 1},{i + 1},{HALF[(u + 3 * int(i)) % 10]},{1_000_000 + 1000 * t + u}")
    ratings += list(extra_rating_lines)
    (folder / "movies.csv").write_text("\n".join(movies) + "\n", encoding="utf-8")
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n", encoding="utf-8")
    return folder


def test_loader_reads_half_stars_titles_and_genres(tmp_path):
    data = load_movielens_latest(write_latest(tmp_path / "ml-latest-small"))
    inter = data.interactions
    assert sorted(inter["rating"].unique().tolist()) == HALF
    assert len(inter) == 40 * 12 and data.name == "movielens-ml-latest-small"
    items = data.items.set_index("item")
    assert items.loc["1", "title"] == "Movie 0, The (1990)" and items.loc["1", "description"] == ""
    assert items.loc["3", "description"] == "Comedy, Drama, Sci-Fi"


def test_bad_rating_names_the_line_or_is_counted(tmp_path):
    folder = write_latest(tmp_path / "ml", extra_rating_lines=["7,3,5.5,1000000"])
    with pytest.raises(DataError, match=r"ratings\.csv:482: .*rating '5\.5' outside 0\.5\.\.5"):
        load_movielens_latest(folder)
    data = load_movielens_latest(folder, on_bad_record="skip")
    assert data.skipped == {"bad_rating": 1} and len(data.interactions) == 480


def test_scale_from_the_format_the_data_or_the_config(tmp_path):
    folder = write_latest(tmp_path / "ml")
    cfg = load_config(None, ["data.format=movielens-latest", f"data.path={folder}"])
    assert load_dataset(cfg.data, 0).rating_scale == [0.5, 5.0, 0.5]
    # a csv has no documented scale: it is inferred from the ratings
    csv = tmp_path / "csv"
    csv.mkdir()
    (csv / "items.csv").write_text("item_id,title\n" + "".join(f"i{k},T{k}\n" for k in range(5)))
    (csv / "interactions.csv").write_text("user_id,item_id,timestamp,rating\n"
                                          + "".join(f"u{k % 3},i{k % 5},{k},{0.5 + 0.5 * (k % 10)}\n" for k in range(30)))
    cfg = load_config(None, ["data.format=csv", f"data.path={csv}"])
    assert load_dataset(cfg.data, 0).rating_scale == [0.5, 5.0, 0.5]
    # a configured scale bounds the ratings: 0.5 is outside 1..5
    cfg = load_config(None, ["data.format=csv", f"data.path={csv}", "data.rating_scale=[1,5,1]"])
    with pytest.raises(DataError, match=r"interactions\.csv:2: rating '0\.5' outside 1\.\.5"):
        load_dataset(cfg.data, 0)
    assert RatingScale.infer([1, 2, 5, 3]).as_list() == [1.0, 5.0, 1.0]
    assert RatingScale.infer([0, 2, 10, 4]).as_list() == [0.0, 10.0, 2.0]
    with pytest.raises(ConfigError, match="data.rating_scale"):
        load_config(None, ["data.rating_scale=[1,5,3]"])
    with pytest.raises(ConfigError, match="data.rating_scale"):
        load_config(None, ["data.rating_scale=[5,1,1]"])


QUICK = [
    "tasks=[ctr,topk,rating]", "data.samples_per_user=2", "data.topk_candidates=4", "data.history_len=4",
    "cf.epochs=3", "cf.weight_decays=[0.0001]", "cf.baselines=[mf]",
    "tiny.pretrain_steps=4", "tiny.hidden_size=64", "tiny.intermediate_size=128", "tiny.num_layers=1", "tiny.vocab_size=800",
    "model.max_length=320", "model.meta_hidden=16", "cf.dim=8", "lora.shared.r=4", "lora.task.r=4",
    "train.steps=3", "train.micro_batch_size=4", "train.log_every=1", "train.save_every=3", "loader.workers=0",
    "eval.max_samples_per_task=6", "eval.batch_size=6", "eval.max_new_tokens=4",
    "dist.launcher=local", "dist.num_workers=1",
]


@pytest.mark.integration
def test_half_star_folder_prepares_trains_and_evaluates(tmp_path):
    folder = write_latest(tmp_path / "ml-latest-small")
    run = tmp_path / "run"
    rc = main(["train", "--config", "configs/quickstart.yaml", f"run.dir={run}", "data.format=movielens-latest",
               f"data.path={folder}", *QUICK])
    assert rc == 0
    rating = [s for s in read_split(run / "data" / "shards", "train") if s["task"] == "rating"]
    assert rating and all(s["target"] in {f"{v:g}" for v in HALF} for s in rating)
    assert any("." in s["target"] for s in rating)  # half stars reach the answers
    assert "from 0.5 to 5 in steps of 0.5" in rating[0]["prompt"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"]["rating_scale"] == [0.5, 5.0, 0.5]
    assert 0.0 <= metrics["rating"]["mae"] <= 4.5 and metrics["rating"]["n"] == 6
