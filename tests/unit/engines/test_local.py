"""An engine's own output (vLLM, torch, transformers) reaches stderr only with -v; its last lines
are kept either way, for the message when it dies."""

import multiprocessing as mp
import os

from pipeline.engines.local import _Tail, engine_log_env


def tail_of(text, echo):
    read, write = mp.Pipe(duplex=False)
    tail = _Tail(read, echo=echo)
    os.write(write.fileno(), text)  # as the engine's stdout and stderr do
    write.close()
    return tail.last_lines(n=2, wait=5)


def test_engine_output_is_kept_but_not_shown_by_default(capfd):
    assert tail_of(b"INFO loading\nWARNING slow\nERROR boom\n", echo=False) == "WARNING slow\nERROR boom"
    assert "boom" not in capfd.readouterr().err


def test_engine_output_is_shown_with_verbose(capfd):
    assert tail_of(b"INFO loading\nWARNING slow\n", echo=True) == "INFO loading\nWARNING slow"
    assert "INFO loading\nWARNING slow" in capfd.readouterr().err


def test_quiet_engines_get_quiet_logging_settings():
    quiet = engine_log_env(verbose=False)
    assert quiet["TRANSFORMERS_VERBOSITY"] == "error" and quiet["PYTHONWARNINGS"] == "ignore"
    assert engine_log_env(verbose=True) == {}
