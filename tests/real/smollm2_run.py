"""One real run of the embedded SmolLM2 (`pipeline run -m smollm2 --max-model-len 512`) whose
rows several test files read, so that it costs one engine load for all of them: identical greedy
and sampled rows (test_identical_real.py), and an image row beside a text row for a text model
(test_images_real.py). Each file's rows are its own; none changes another's verdicts. Computed
once per session, as test_scale's local baseline is."""

import json

from conftest import chat_line, invoke, read_output, write_jsonl

GREEDY = dict(temperature=0, max_tokens=12)
SAMPLED = dict(temperature=1.0, max_tokens=12)


def greedy_rows():
    rows = [chat_line(f"same-{i}", "Name a fruit that is yellow.", **GREEDY) for i in range(4)]
    return rows + [chat_line("other", "Name a colour.", **GREEDY),
                   chat_line("seeded-a", "Say a word.", temperature=1.0, seed=7, max_tokens=6),
                   chat_line("seeded-b", "Say a word.", temperature=1.0, seed=7, max_tokens=6)]


def sampled_rows():
    """Four identical sampled rows, one of them asking n=2."""
    return [
        chat_line(f"s-{i}", "Write one sentence about any animal you like.", **SAMPLED, **({"n": 2} if i == 0 else {}))
        for i in range(4)
    ]


def picture_rows():
    """A row with an image and a row of text, as test_images_real.py writes them."""
    from vlm_model import data_url, png

    def chat(custom_id, *parts):
        content = [{"type": "text", "text": "What is in this picture?"}, *parts]
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}}

    return [chat("img", {"type": "image_url", "image_url": {"url": data_url(png(8, 8))}}), chat("txt")]


def shared_run(tmp_path_factory):
    """(the run's report, every row)."""
    base = tmp_path_factory.getbasetemp() / "smollm2-512"
    out = base / "out"
    if not (out / "_SUCCESS").exists():
        base.mkdir(exist_ok=True)
        src = write_jsonl(base / "in.jsonl", greedy_rows() + sampled_rows() + picture_rows())
        res = invoke("run", src, "-o", out, "-m", "smollm2", "--max-model-len", "512", "-q")
        assert res.exit_code == 0, res.output
    return json.loads((out / "_report.json").read_text()), read_output(out)
