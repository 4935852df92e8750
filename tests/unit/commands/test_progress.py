"""Progress: plain periodic lines when stderr is not a terminal, nothing with --quiet."""

import io

from pipeline.commands.progress import Progress


def test_plain_lines_for_logs():
    stream = io.StringIO()
    p = Progress(10, quiet=False, interval=0.0, stream=stream)
    p.update(4, generated_tokens=40)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines and lines[0].startswith("progress: 4/10 requests")
    assert "generated tok/s" in lines[0] and "ETA" in lines[0]


def test_quiet_prints_nothing():
    stream = io.StringIO()
    p = Progress(10, quiet=True, interval=0.0, stream=stream)
    p.update(10, 5)
    p.line("hello")
    p.close()
    assert stream.getvalue() == ""


def test_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    p = Progress(3, quiet=False, stream=stream)
    p.update(3, 30)
    p.close()
    assert "3/3" in stream.getvalue() and "tok/s" in stream.getvalue()
