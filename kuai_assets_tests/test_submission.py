"""The submission is exactly the competition format; the validator rejects everything else."""

import numpy as np
import pytest

from kuai_assets.formats.released import DataFormatError
from kuai_assets.formats.submission import validate_submission, write_submission

TEST_ROWS = [(1, 10, 760000000000, 5), (1, 11, 760000000000, 0), (2, 10, 760000001000, 7)]


@pytest.fixture
def test_file(tmp_path):
    path = tmp_path / "test_interaction.txt"
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in TEST_ROWS))
    return path


def write_lines(tmp_path, lines):
    path = tmp_path / "submission.txt"
    path.write_text("".join(l + "\n" for l in lines))
    return path


def test_written_submission_is_valid_with_six_decimals(tmp_path, test_file):
    path = tmp_path / "submission.txt"
    write_submission(path, np.array([1, 1, 2]), np.array([10, 11, 10]), np.array([0.1234564, 1.0, 0.0]))
    assert path.read_text() == "1\t10\t0.123456\n1\t11\t1.000000\n2\t10\t0.000000\n"
    assert validate_submission(path, test_file) == 3


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1\t10\t0.100000", "1\t11\t0.200000"], "have no probability"),
        (["1\t10\t0.100000", "1\t11\t0.200000", "2\t10\t0.300000", "3\t10\t0.300000"], "is not a row of"),
        (["1\t10\t0.100000", "1\t11\t1.500000", "2\t10\t0.300000"], r"outside \[0, 1\]"),
        (["1\t10\t0.100000", "1\t11\t0.2", "2\t10\t0.300000"], "six decimals"),
        (["1\t10\t0.100000", "1\t11\t-0.200000", "2\t10\t0.300000"], "six decimals"),
        (["1\t10\t0.100000", "1,11,0.200000", "2\t10\t0.300000"], "six decimals"),
        (["user_id\tphoto_id\tclick_probability", "1\t10\t0.100000", "1\t11\t0.200000", "2\t10\t0.300000"], "six decimals"),
        (["1\t10\t0.100000", "1\t10\t0.100000", "1\t11\t0.200000", "2\t10\t0.300000"], "more than once"),
    ],
)
def test_validator_rejects(tmp_path, test_file, lines, message):
    with pytest.raises(DataFormatError, match=message):
        validate_submission(write_lines(tmp_path, lines), test_file)


def test_validator_rejects_out_of_range_even_when_formatted(tmp_path, test_file):
    with pytest.raises(DataFormatError, match=r"outside \[0, 1\]"):
        validate_submission(write_lines(tmp_path, ["1\t10\t0.100000", "1\t11\t1.000001", "2\t10\t0.300000"]), test_file)


def test_writer_refuses_out_of_range(tmp_path):
    with pytest.raises(ValueError):
        write_submission(tmp_path / "s.txt", np.array([1]), np.array([2]), np.array([1.2]))
    assert not (tmp_path / "s.txt").exists()
