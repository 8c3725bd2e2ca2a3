"""Data loading and validation: the shipped default and every bad-input case."""

import math

import pytest
import torch

from gradest.errors import GradestError
from gradest.gaussian.data import default_dataset, load_dataset, validate


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_dataset_is_100_normal_draws():
    data = default_dataset()
    assert data.n == 100
    assert torch.isfinite(data.values).all()
    assert data.values.dtype == torch.float64
    assert data.var_mle == pytest.approx(float(((data.values - data.values.mean()) ** 2).mean()))
    assert data.sd == pytest.approx(math.sqrt(data.var_mle))
    assert torch.equal(load_dataset().values, data.values)  # no path: the default


def test_one_column_file_needs_no_column(tmp_path):
    data = load_dataset(write(tmp_path, "height\n1.5\n2.5\n4\n"))
    assert data.values.tolist() == [1.5, 2.5, 4.0]
    assert data.column == "height"
    assert data.mean == pytest.approx(8 / 3)


def test_column_picks_one_of_several(tmp_path):
    data = load_dataset(write(tmp_path, "a,b\n1,10\n2,20\n3,35\n"), column="b")
    assert data.values.tolist() == [10.0, 20.0, 35.0]


def test_blank_lines_are_ignored(tmp_path):
    assert load_dataset(write(tmp_path, "x\n1\n\n2\n")).n == 2


@pytest.mark.parametrize(
    ("text", "column", "match"),
    [
        ("a,b\n1,2\n3,4\n", None, "pick one with --column"),
        ("a,b\n1,2\n3,4\n", "c", "no column 'c'; its columns are: a, b"),
        ("x\n1\nabc\n3\n", None, r"row 3.*'abc' is not a number"),
        ("x\n1\n\n", None, "need at least 2"),
        ("x\n1\nnan\n3\n", None, "not finite"),
        ("x\n1\ninf\n3\n", None, "not finite"),
        ("x\n1\n-inf\n3\n", None, "not finite"),
        ("x\n", None, "need at least 2"),
        ("", None, "is empty"),
        ("x\n2.5\n2.5\n2.5\n", None, "all values equal 2.5"),
        ("a,b\n1,\n2,3\n", "b", r"row 2.*'' is not a number"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, text, column, match):
    with pytest.raises(GradestError, match=match) as err:
        load_dataset(write(tmp_path, text), column=column)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(GradestError, match="data file not found"):
        load_dataset(tmp_path / "nope.csv")


def test_column_without_data_is_an_error():
    with pytest.raises(GradestError, match="give --data too"):
        load_dataset(None, column="x")


def test_validate_rejects_constant_and_short_tensors():
    with pytest.raises(GradestError, match="at least 2"):
        validate(torch.tensor([1.0]))
    with pytest.raises(GradestError, match="all values equal"):
        validate(torch.full((5,), 3.0))
    assert validate(torch.tensor([1.0, 2.0])).n == 2


def test_one_column_without_header_reads_every_row(tmp_path):
    data = load_dataset(write(tmp_path, "1.5\n2.5\n4\n"))
    assert data.values.tolist() == [1.5, 2.5, 4.0]
    assert data.column is None and "no header row" in data.described


def test_numeric_first_row_of_several_columns_asks_for_a_header(tmp_path):
    with pytest.raises(GradestError, match=r"no header row.*add a row of column names"):
        load_dataset(write(tmp_path, "1,2\n3,4\n5,7\n"), column="b")


@pytest.mark.parametrize(("text", "words"), [("a;x\n1;2,5\n2;3,5\n", "semicolon"),
                                             ("a\tx\n1\t2\n2\t3\n", "tab")])
def test_other_separators_are_named_with_the_fix(tmp_path, text, words):
    with pytest.raises(GradestError, match=f"looks {words}-separated.*comma-separated") as err:
        load_dataset(write(tmp_path, text), column="x")
    assert "\n" not in str(err.value)


def test_bom_crlf_quotes_and_padding_are_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeff"id" , "x" \r\n"0", " 1.5e0 "\r\n\r\n"1","-2.5"\r\n'.encode())
    assert load_dataset(path, column="x").values.tolist() == [1.5, -2.5]


def test_folder_as_data_is_named(tmp_path):
    with pytest.raises(GradestError, match="is a folder"):
        load_dataset(tmp_path)


def test_unresolvable_spread_is_not_called_constant():
    values = torch.tensor([1e9, 1e9 + 2**-22, 1e9 + 2**-21], dtype=torch.float64)
    with pytest.raises(GradestError, match=r"too little for float64.*subtract a constant"):
        validate(values)
    tiny = validate(torch.tensor([1e-20, 2e-20, 4e-20]))  # small in absolute terms, well resolved
    assert tiny.n == 3


def test_latin1_and_utf16_exports_are_read_and_binary_is_refused(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,température\n1,36.5\n2,37.1\n".encode("latin-1"))
    assert load_dataset(latin, column="température").values.tolist() == [36.5, 37.1]
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("x\r\n1.5\r\n2\r\n".encode("utf-16"))
    assert load_dataset(utf16).values.tolist() == [1.5, 2.0]
    binary = tmp_path / "image.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(GradestError, match="not a text file"):
        load_dataset(binary)


def test_decimal_commas_are_refused_not_truncated(tmp_path):
    # "1,5" under a one-column header would otherwise read as 1
    with pytest.raises(GradestError, match=r"row 2 has 2 cells .*decimal comma"):
        load_dataset(write(tmp_path, "x\n1,5\n2,25\n3,0\n"))


def test_trailing_commas_add_no_column(tmp_path):
    assert load_dataset(write(tmp_path, "x,\n1,\n2,\n4,\n")).values.tolist() == [1.0, 2.0, 4.0]
