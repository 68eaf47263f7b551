"""Hostile supplier files: each is refused with a reason a supplier can act on, and none takes the
process down (issue 7, item 4)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from claro_dagster.operations.read import ReadLimits, SupplierFileError, iter_supplier_file, read_supplier_file
from claro_dagster.operations.read.contained import contained
from tests import hostile

ROOT = Path(__file__).resolve().parents[2]


def refused(path: Path, *fragments: str, **kwargs) -> SupplierFileError:
    with pytest.raises(SupplierFileError) as info:
        read_supplier_file(path, **kwargs)
    error = info.value
    assert error.file == path.name and str(error).startswith(path.name)
    for fragment in fragments:
        assert fragment in str(error), str(error)
    return error


def test_the_far_away_cell_of_issue_7_is_refused_and_the_process_lives(tmp_path):
    """The 1.7 KB workbook that made python-calamine abort the whole interpreter: read in a separate
    interpreter here, so on a reader without containment this test fails instead of killing pytest."""
    path = hostile.far_away_cell(tmp_path / "globex.xlsx")
    assert path.stat().st_size < 2000
    script = textwrap.dedent(f"""
        from claro_dagster.operations.read import SupplierFileError, read_supplier_file
        try:
            read_supplier_file({str(path)!r})
        except SupplierFileError as exc:
            print("REFUSED:", exc)
        print("STILL ALIVE")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "STILL ALIVE" in done.stdout
    assert "REFUSED: globex.xlsx: refused: the sheet 'Products' has a cell at XFD1048576" in done.stdout
    assert "A1:XFD1048576 (17 billion cells)" in done.stdout and "Ctrl+End" in done.stdout


def test_far_away_cell_in_this_process_too(tmp_path):
    error = refused(hostile.far_away_cell(tmp_path / "g.xlsx"), "has a cell at XFD1048576", "holds only 5 cells")
    assert "save the sheet again without the empty range" in str(error)


@pytest.mark.parametrize(("build", "fragments"), [
    (hostile.huge_dimension, ["the sheet 'Products' declares the range A1:XFD1048576 (17 billion cells)",
                              "save the sheet again without the empty range"]),
    (hostile.shared_strings_bomb, ["shared text declares 4,000,000,000 strings", "shared-strings bomb"]),
    (hostile.entity_bomb, ["xl/sharedStrings.xml declares XML entities", "XML bomb"]),
    (hostile.deeply_nested, ["xl/workbook.xml is nested more than 64 levels deep"]),
    (hostile.external_links, ["links to 1 other workbook (file:///", "fileserver", "Break Link"]),
    (hostile.thousands_of_sheets, ["has 3,000 sheets (limit 1,000)", "Move or Copy"]),
    (hostile.zip_bomb, ["xl/worksheets/sheet1.xml expands", "zip bomb"]),
    (hostile.encrypted_parts, ["password-protected workbook (its parts are encrypted)", "remove the password"]),
    (hostile.password_protected, ["password-protected workbook", "remove the password"]),
])
def test_hostile_workbooks_are_refused_with_their_reason(tmp_path, build, fragments):
    refused(build(tmp_path / "supplier.xlsx"), *fragments)


def test_hostile_csv_gigantic_line(tmp_path):
    path = hostile.csv_gigantic_line(tmp_path / "acme.csv", 3 * 1024 * 1024)
    error = refused(path, "longer than 1.0 MB without a line end", limits=ReadLimits(max_line_bytes=1024 * 1024))
    assert error.line == 2


def test_hostile_csv_gigantic_header_line(tmp_path):
    path = tmp_path / "acme.csv"
    path.write_bytes(b"x" * (3 * 1024 * 1024))
    error = refused(path, "longer than 1.0 MB", limits=ReadLimits(max_line_bytes=1024 * 1024))
    assert error.line == 1


def test_hostile_csv_with_a_million_columns(tmp_path):
    error = refused(hostile.csv_million_columns(tmp_path / "acme.csv"),
                    "the header has 1,000,000 columns separated by ','", "16,384 a spreadsheet can hold")
    assert error.line == 1


@pytest.mark.parametrize(("build", "fragments", "line"), [
    (hostile.csv_with_nul_bytes, ["not a text file (it contains NUL bytes)"], 20_002),
    (hostile.csv_binary, ["not a text file"], None),
])
def test_hostile_csv_binary_content(tmp_path, build, fragments, line):
    assert refused(build(tmp_path / "acme.csv"), *fragments).line == line


def test_chunked_reading_is_contained_too(tmp_path):
    with pytest.raises(SupplierFileError, match="has a cell at XFD1048576"):
        list(iter_supplier_file(hostile.far_away_cell(tmp_path / "g.xlsx")))


def test_chunks_before_a_bad_line_arrive_then_the_error(tmp_path):
    path = tmp_path / "acme.csv"
    path.write_text("sku,title\n" + "".join(f"A{i},t\n" for i in range(10)) + "A10,t,extra,cells\n")
    chunks = iter_supplier_file(path, chunk_rows=4)
    assert [len(next(chunks).frame), len(next(chunks).frame)] == [4, 4]
    with pytest.raises(SupplierFileError, match="line 12: the row has 4 cells"):
        next(chunks)


# --------------------------------------------------------------------------------------------
# the contained runner itself: every way a child can die ends as a SupplierFileError


def run(job, *args, **limits):
    seconds = limits.pop("seconds", 60)
    with contained(job, args, file="acme.xlsx", limits=ReadLimits(**limits), seconds=seconds) as (value, out):
        return value, (out / "note.txt").read_text() if (out / "note.txt").exists() else None


def test_child_result_and_files_come_back():
    assert run(hostile.job_returns, {"rows": 3}) == ({"rows": 3}, "written by the child")


@pytest.mark.parametrize(("job", "fragment"), [
    (hostile.job_aborts, r"the spreadsheet reader crashed on this file \(SIGABRT\)"),
    (hostile.job_segfaults, r"the spreadsheet reader crashed on this file \(SIGSEGV"),
])
def test_a_native_crash_is_a_supplier_error(job, fragment):
    with pytest.raises(SupplierFileError, match=fragment) as info:
        run(job)
    assert str(info.value).startswith("acme.xlsx: ") and "send it again" in str(info.value)


def test_runaway_allocation_hits_the_memory_limit():
    with pytest.raises(SupplierFileError, match=r"needed more than the 250.0 MB of memory"):
        run(hostile.job_allocates, 4 * 1024**3, memory_bytes=250_000_000)


def test_a_hang_is_stopped_at_the_time_limit():
    with pytest.raises(SupplierFileError, match="took longer than 2 seconds and was stopped"):
        run(hostile.job_spins, seconds=2)


def test_an_unexpected_exception_in_the_child_is_reported_not_raised_raw():
    with pytest.raises(SupplierFileError, match="the reader failed on this file .KeyError: 'a defect in the reader'") \
            as info:
        run(hostile.job_raises)
    assert "in job_raises" in "".join(info.value.__notes__)  # the child's traceback, for whoever fixes it


def test_other_files_read_after_a_crash(tmp_path):
    with pytest.raises(SupplierFileError):
        run(hostile.job_aborts)
    good = tmp_path / "acme.csv"
    good.write_text("sku,title\nA1,Mug\n")
    assert read_supplier_file(good).frame["sku"].tolist() == ["A1"]


def test_ordinary_workbook_features_are_not_mistaken_for_hostile_ones(tmp_path):
    """Hyperlinks (external relationships of a sheet), many sheets, shared strings and a full-height
    declared range within the limits all read normally."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Products"
    ws.append(["sku", "title", "link"])
    ws.append(["A1", "Mug", "datasheet"])
    ws["C2"].hyperlink = "https://example.com/datasheets/a1.pdf"
    for i in range(40):
        wb.create_sheet(f"Notes {i}").append(["note", i])
    path = tmp_path / "globex.xlsx"
    wb.save(path)
    batch = read_supplier_file(path)
    assert batch.sheet == "Products" and batch.frame["link"].tolist() == ["datasheet"]
    tall = hostile.workbook(tmp_path / "tall.xlsx", {"Products": hostile.sheet_xml(dimension="A1:AV1048576")})
    assert read_supplier_file(tall).frame["sku"].tolist() == ["GLX-1"]  # 48 columns x 1,048,576 rows: allowed


def test_a_corrupt_part_is_a_damaged_workbook(tmp_path):
    path = hostile.workbook(tmp_path / "g.xlsx")
    data = bytearray(path.read_bytes())
    at = data.find(b"xl/workbook.xml") + len("xl/workbook.xml")  # the local header's name, then its data
    data[at + 5 : at + 25] = b"\xff" * 20
    path.write_bytes(bytes(data))
    refused(path, "the workbook is damaged (broken zip)")
