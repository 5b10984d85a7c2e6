"""Each MovieLens format, written small by hand, converts to the same generic dataset."""

from pathlib import Path

import pytest

from recdata import convert, load_dataset
from recdata.movielens import age_group, detect_format, split_title

GENRE_FLAGS = ["0"] * 19


def _flags(*names: str) -> list[str]:
    from recdata.movielens import _ML100K_GENRES

    return ["1" if g in names else "0" for g in _ML100K_GENRES]


def write_ml100k(d: Path) -> None:
    d.mkdir()
    (d / "u.data").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250000\n")
    item = "|".join(["10", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *_flags("Animation", "Comedy")])
    item2 = "|".join(["20", "Heat (1995)", "01-Jan-1995", "", "http://y", *_flags("Action")])
    (d / "u.item").write_text(item + "\n" + item2 + "\n", encoding="latin-1")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")


def write_ml1m(d: Path) -> None:
    d.mkdir()
    (d / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978300761\n2::10::4::978300000\n")
    (d / "movies.dat").write_text(
        "10::Toy Story (1995)::Animation|Comedy\n20::Heat (1995)::Action\n", encoding="latin-1"
    )
    (d / "users.dat").write_text("1::M::18::4::85711\n2::F::50::1::94043\n")


def write_recbole(d: Path) -> None:
    d.mkdir()
    (d / "ml.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250000\n"
    )
    (d / "ml.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Comedy\n20\tHeat\t1995\tAction\n"
    )
    (d / "ml.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n"
    )


def write_latest(d: Path) -> None:
    d.mkdir()
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,5.0,881250949\n1,20,3.0,881250950\n2,10,4.0,881250000\n"
    )
    (d / "movies.csv").write_text(
        'movieId,title,genres\n10,Toy Story (1995),Animation|Comedy\n20,"Heat (1995)",Action\n'
    )
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,Pixar,1\n2,10,pixar,2\n2,10,fun,3\n")


@pytest.mark.parametrize(
    ("writer", "fmt", "has_users"),
    [(write_ml100k, "ml-100k", True), (write_ml1m, "ml-1m", True), (write_recbole, "recbole", True),
     (write_latest, "movielens-latest", False)],
)  # fmt: skip
def test_formats_convert_to_generic(tmp_path: Path, writer, fmt: str, has_users: bool) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    writer(src)
    assert detect_format(src) == fmt
    d = convert(src, tmp_path / "out", fmt)
    assert d.item_ids == ("10", "20")
    assert d.item_text["title"] == ("Toy Story", "Heat")
    assert d.item_categorical["genres"].values_of(0) == ["Animation", "Comedy"]
    assert d.item_numerical["year"].tolist() == [1995.0, 1995.0]
    assert d.item_numerical["rating_count"].tolist() == [2.0, 1.0]
    assert d.item_numerical["rating_mean"].tolist() == [4.5, 3.0]
    assert len(d.interactions) == 3
    if has_users:
        assert d.sensitive == ("gender", "age_group")
        assert d.user_attributes["gender"].vocab[d.user_attributes["gender"].codes[0]] == "M"
    else:
        assert d.item_text["tags"][0] == "pixar; fun"  # most frequent first, case-folded
    # the converted folder loads on its own
    assert load_dataset(tmp_path / "out").fingerprint() == d.fingerprint()


def test_helpers() -> None:
    assert split_title("Toy Story (1995)") == ("Toy Story", "1995")
    assert split_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")[1] == "1995"
    assert split_title("Untitled") == ("Untitled", "")
    assert [age_group(a) for a in (7, 18, 24, 25, 49, 50, 56, 80)] == [
        "under 18", "18-24", "18-24", "25-34", "45-49", "50-55", "56+", "56+"]  # fmt: skip


def test_bundled_dataset_loads() -> None:
    d = load_dataset("ml-latest-small")
    assert (d.num_users, d.num_items, len(d.interactions)) == (610, 9742, 100836)
    assert set(d.item_text) == {"title", "tags"}
    assert "Comedy" in d.item_categorical["genres"].vocab
    assert "(no genres listed)" not in d.item_categorical["genres"].vocab
