"""CSV data input: files pandas would read the wrong way are refused with one line naming
data.path, what was found and what is allowed (runner.data.load_csv)."""

from __future__ import annotations

import pytest

from runner.data import load_csv
from runner.errors import ConfigError
from tests.helpers import run_cli


def refusal(tmp_path, text: str | None, *, target: str = "y", features=None) -> str:
    """The one-line message load_csv gives for a file holding `text` (None: a directory)."""
    path = tmp_path / "data.csv"
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_csv(str(path), target, features)
    message = str(err.value)
    assert "\n" not in message
    return message.replace(str(path), "data.csv")


@pytest.mark.parametrize(
    "text,message",
    [
        # every row one field longer than the header: pandas made x the index and trained on
        # the wrong columns
        ("x,y\n1,2,9\n2,4,9\n3,6,9\n", "every row with the header's 2 fields; line 2 has 3"),
        ("x,y\n1,2\n2,4\n3,6,1\n", "every row with the header's 2 fields; line 4 has 3"),
        # a short row: pandas filled it with NaN
        ("x,y\n1,2\n\n2\n3,6\n", "every row with the header's 2 fields; line 4 has 1"),
        # the line of a row after a quoted field that spans two lines
        ('x,y,name\n1,2,"a\nb"\n2,4\n', "every row with the header's 3 fields; line 4 has 2"),
    ],
    ids=["extra field in every row", "extra field in one row", "short row", "multi-line field"],
)
def test_a_row_with_more_or_fewer_fields_than_the_header_is_refused(tmp_path, text, message):
    assert refusal(tmp_path, text) == f"data.path=data.csv: expected {message}"


@pytest.mark.parametrize(
    "text,found",
    [(None, "a CSV file (found a directory)"),
     ("", "a CSV file with a header row (found an empty file)"),
     ("\n  \n", "a CSV file with a header row (found only blank lines)")],
    ids=["directory", "empty", "blank lines"],
)  # fmt: skip
def test_a_directory_or_an_empty_file_is_refused_saying_what_was_found(tmp_path, text, found):
    assert refusal(tmp_path, text) == f"data.path=data.csv: expected {found}"


@pytest.mark.parametrize(
    "features,message",
    [
        (["y"], "data.features=['y']: expected columns other than the target (data.target=y)"),
        (["x", "y"], "data.features=['x', 'y']: expected columns other than the target"),
        (["x", "x"], "data.features=['x', 'x']: expected each column once; 'x' is listed 2 times"),
    ],
)
def test_features_must_be_distinct_columns_other_than_the_target(tmp_path, features, message):
    assert refusal(tmp_path, "x,y\n1,2\n2,4\n", features=features).startswith(message)


def test_blank_lines_and_quoted_fields_still_read_as_pandas_reads_them(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('x,y,name\n1,2,"a, b"\n\n  \n2,4,"c\nd"\n')
    data = load_csv(str(path), "y", ["x"])
    assert data.x.tolist() == [[1.0], [2.0]] and data.y.tolist() == [2.0, 4.0]


@pytest.mark.slow
def test_a_ragged_file_ends_the_command_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "prices.csv").write_text("size,price\n50,150,1\n80,260,1\n")
    result = run_cli(
        "data=csv", "data.path=prices.csv", "data.target=price", "model=linear",
        "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "runner: error: data.path=prices.csv: expected every row with the header's 2 fields; "
        "line 2 has 3"
    ]
    assert not (tmp_path / "run" / "metrics.csv").exists()
