import io

from claro_dagster import progress as progress_module
from claro_dagster.progress import progress


def test_plain_lines_when_not_a_terminal_name_the_work_the_count_and_the_rate(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY", 0.0)
    out = io.StringIO()
    with progress("export products", total=300, unit="rows", stream=out) as bar:
        for _ in range(3):
            bar.advance(100)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("export products: 100 of 300 rows (") and "s left" in lines[0]
    assert lines[-1].startswith("export products: 300 of 300 rows (") and " in " in lines[-1]


def test_a_terminal_gets_a_bar_and_no_plain_lines():
    out = io.StringIO()
    with progress("run", total=2, unit="batches", stream=out, terminal=True) as bar:
        bar.advance()
        bar.advance()
    assert "run" in out.getvalue() and "2/2" in out.getvalue() and "batches" in out.getvalue()


def test_unknown_total_still_reports_what_was_done():
    out = io.StringIO()
    with progress("upload", unit="rows", stream=out) as bar:
        bar.advance(5)
    assert out.getvalue().startswith("upload: 5 rows (")
