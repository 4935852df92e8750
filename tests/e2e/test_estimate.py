"""`pipeline estimate` and the prompt counter behind it, on the embedded model's tokenizer
(no engine). Equality with a real run's prompt_tokens is in test_engine_real.py; here the
counter is held to vLLM's own renderer functions (imported without an engine) and to
`tokenizer(text, add_special_tokens=False)`, the call vLLM makes."""

import copy
import json
import random
import shutil
from types import SimpleNamespace

import polars as pl
import pytest
from conftest import MODEL, chat_line, invoke, write_jsonl

from pipeline.commands.estimate import completion_upper
from pipeline.models.embedded import embedded_model_dir
from pipeline.models.names import context_length
from pipeline.models.render import content_format
from pipeline.models.tokens import PromptCounter
from pipeline.records import FailedRequest, Request

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# Qwen2.5's tool-use template: tools as JSON, tool-call arguments through tojson (a dict).
TOOLS_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""
# Loops over content parts: vLLM keeps parts as parts ("openai" format), no "\n" between them.
PARTS_TEMPLATE = """{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}
{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
# The same through a macro parameter, which vLLM's detection also follows.
MACRO_TEMPLATE = """{% macro text(c) %}{% for p in c %}{{ p.text }}|{% endfor %}{% endmacro %}{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.content is string %}{{ m.content }}{% else %}{{ text(m.content) }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
DEVELOPER_TEMPLATE = """{% for m in messages %}<|im_start|>{% if m.role == 'developer' %}developer{% else %}{{ m.role }}{% endif %}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
STRICT_TEMPLATE = """{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be from the user') }}{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
TEMPLATES = {"smollm2": None, "tools": TOOLS_TEMPLATE, "parts": PARTS_TEMPLATE, "macro": MACRO_TEMPLATE,
             "developer": DEVELOPER_TEMPLATE, "strict": STRICT_TEMPLATE}


def tool_turns(arguments, content=None):
    return [
        {"role": "user", "content": "What's the weather in Paris and Rome?"},
        {"role": "assistant", "content": content, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "{\"temp_c\": 25}"},
                                                               {"type": "text", "text": "sunny"}]},
    ]


# (messages, tools): system prompts, multi-turn, tools and tool results, content parts, developer
# messages, odd whitespace, unicode and special-token text inside content.
CONVERSATIONS = [
    ([{"role": "user", "content": "Hi"}], None),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None),
    ([{"role": "system", "content": [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]},
      {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there", "cache_control": {"type": "ephemeral"}}]}], None),
    ([{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Banana.", "name": "bot"},
      {"role": "user", "content": "  Another one, please.  \n\n"}], None),
    (tool_turns("{\"city\": \"Paris\"}"), [WEATHER]),
    (tool_turns("{not json", content="Let me check."), [WEATHER]),
    (tool_turns(""), [WEATHER]),
    (tool_turns("[1, 2]"), [WEATHER]),
    (tool_turns({"city": "Paris"}), None),
    ([{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}], None),
    ([{"role": "system", "content": "A"}, {"role": "developer", "content": "B"}, {"role": "user", "content": "C"}], None),
    ([{"role": "system", "content": "x-anthropic-billing-header: cch=1\nReal system prompt"},
      {"role": "user", "content": "é 中文 🙂 <|im_end|> literal\ttabs"}], None),
    ([{"role": "user", "content": ""}, {"role": "assistant", "content": "ok", "reasoning": "thought"},
      {"role": "user", "content": "\n"}], None),
]


@pytest.fixture(scope="module")
def smollm2():
    return PromptCounter("smollm2")


@pytest.fixture(scope="module")
def counters(tmp_path_factory, smollm2):
    """A PromptCounter per template: the embedded model's tokenizer with another chat template."""
    out = {"smollm2": smollm2}
    for name, template in TEMPLATES.items():
        if template is not None:
            out[name] = PromptCounter(str(model_folder(tmp_path_factory.mktemp(name), template)))
    return out


def model_folder(folder, template, config=None):
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_model_dir() / f, folder / f)
    (folder / "chat_template.jinja").write_text(template)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def request(messages, tools=None, cid="r", tool_choice=None, **params):
    return Request.chat(cid, "f.jsonl", 1, messages, params, tools, tool_choice)


def rendered(counter, messages, tools):
    try:
        return counter.render(messages, tools)
    except ValueError as e:
        return type(e).__name__


# ---- the counter ------------------------------------------------------------------------------
def test_matches_vllm_renderer(counters):
    """vLLM's own parse_chat_messages + safe_apply_chat_template (renderers/, no engine) and
    its tokenizer call give the same text and ids, on every template and conversation."""
    hf = pytest.importorskip("vllm.renderers.hf")
    chat_utils = pytest.importorskip("vllm.renderers.chat_utils")
    config = SimpleNamespace(multimodal_config=None, enable_prompt_embeds=False)
    for name, counter in counters.items():
        tok = counter.tokenizer
        template = tok.get_chat_template(None, None)
        assert content_format(template) == hf._detect_content_format(template, default="string"), name
        for messages, tools in CONVERSATIONS:
            try:
                conv, _, _ = chat_utils.parse_chat_messages(copy.deepcopy(messages), config, content_format(template))
                text = hf.safe_apply_chat_template(config, tok, conv, tools=tools, chat_template=template, tokenize=False,
                                                   add_generation_prompt=True, continue_final_message=False, return_dict=False)
            except Exception:  # VLLMValidationError: the engine refuses the request
                assert rendered(counter, messages, tools) == "PromptError", (name, messages)
                continue
            assert counter.render(messages, tools) == text, (name, messages)
            ids = tok(text, add_special_tokens=False, truncation=True, max_length=counter.max_model_len + 1)["input_ids"]
            assert counter.token_ids(request(messages, tools)) == ids, (name, messages)


def test_content_format_detection_agrees_with_vllm():
    hf = pytest.importorskip("vllm.renderers.hf")
    from pathlib import Path

    import vllm.transformers_utils.chat_templates as bundled

    templates = [p.read_text() for p in Path(bundled.__file__).parent.glob("*.jinja")]
    templates += [t for t in TEMPLATES.values() if t]
    templates += ["{% for m in messages %}{% for c in m.content %}{{ c.text }}{% endfor %}{% endfor %}",
                  "{% set msgs = messages[1:] %}{% for m in msgs %}{% for c in m['content'] | reverse %}{% endfor %}{% endfor %}",
                  "{% for k, v in messages %}{% endfor %}", "{% for m in messages %}{{ m.content }}{% endfor %}", "{{ unclosed"]
    assert {content_format(t) for t in templates} == {"string", "openai"}
    for t in templates:
        assert content_format(t) == hf._detect_content_format(t, default="string"), t


def test_parts_template_keeps_parts_and_others_join_them(counters):
    messages = CONVERSATIONS[2][0]
    assert "Hi\nthere" in counters["smollm2"].render(messages)
    assert "Hithere" in counters["parts"].render(messages)
    assert "Hi|there|" in counters["macro"].render(messages)


def test_tools_rendered_and_arguments_become_objects(counters):
    text = counters["tools"].render(*CONVERSATIONS[4])
    assert '"name": "get_weather"' in text and '"arguments": {"city": "Paris"}' in text
    assert '"arguments": {}' in counters["tools"].render(*CONVERSATIONS[5])  # invalid JSON -> {}
    with_tools = counters["tools"].count(request(*CONVERSATIONS[4]))
    none = counters["tools"].count(request(CONVERSATIONS[4][0], [WEATHER], tool_choice="none"))
    assert none == counters["tools"].count(request(CONVERSATIONS[4][0])) < with_tools


def test_developer_role(counters):
    messages = CONVERSATIONS[10][0]
    assert counters["smollm2"].render(messages).startswith("<|im_start|>system\nA\n\nB<|im_end|>")
    assert "<|im_start|>developerB<|im_end|>" in counters["developer"].render(messages)  # trim_blocks eats the newline


def test_template_error_is_an_invalid_request(counters):
    err = counters["strict"].check(request([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]))
    assert isinstance(err, FailedRequest) and err.code == "invalid_request"
    assert "the first message must be from the user" in err.message


def test_segment_cache_equals_whole_text(smollm2):
    """Tokenizing between added tokens, through the cache, gives exactly the ids of the whole
    text, on many prompts, including when the cache evicts."""
    rnd = random.Random(7)
    pieces = ["Hello", " world", "\n", "\n\n", "  ", "\t", "é", "中文", "🙂", "<|im_start|>", "<|im_end|>",
              "<|endoftext|>", "<file_sep>", "user", "assistant", "123", "4.5", "don't", " x ", "<|im", "end|>",
              "I'LL", "'s", "...", " \r\n", "--", "!!! ", "a1b2", "x'y", "\x0b", "\x1c", "\u00a0", "  \n "]
    texts = []
    for _ in range(400):
        messages = [{"role": rnd.choice(["system", "user", "assistant"]),
                     "content": "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))}
                    for _ in range(rnd.randint(1, 4))]
        texts.append(smollm2.render(messages))
        texts.append("".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 30))))
    expected = [smollm2.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert [list(ids) for ids in smollm2._ids(texts)] == expected
    assert [list(ids) for ids in smollm2._ids(texts)] == expected  # now from the cache
    small = PromptCounter("smollm2")
    small.cache_chars = 200
    assert [list(small._ids([t])[0]) for t in texts] == expected
    assert small._cached_chars <= 200


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("kind", ["llama3-split", "nfc-normalizer"])
def test_word_path_on_other_byte_level_tokenizers(tmp_path, kind):
    """A Llama-3-style Split pattern goes word by word; a normalizer keeps to whole segments.
    Either way the ids are those of the whole text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    if kind == "llama3-split":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["The quick brown fox jumps over 12345 lazy dogs; don't it? I'LL go.\n\n  Done!"] * 50
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}<s>{{ m.role }}\n{{ m.content }}</s>\n{% endfor %}<s>assistant\n"
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    counter = PromptCounter(str(tmp_path))
    assert (counter._words is not None) == (kind == "llama3-split")
    rnd = random.Random(5)
    pieces = ["The", " quick", " 12345", "678", " don't", "I'LL", "\n", "\n\n", "  ", " \r\n", "!!", "é", "e\u0301"]
    texts = [counter.render([{"role": "user", "content": "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 15)))}])
             for _ in range(300)]
    assert [list(ids) for ids in counter._ids(texts)] == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_tokenizer_whose_segments_differ_falls_back_to_whole_texts(tmp_path):
    """SentencePiece-style "prepend ▁ to the first word only": a segment alone is not the same."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for ch in "abcdefghijklmnopqrstuvwxyz\n":
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace("▁", prepend_scheme="first"),
                                                pre_tokenizers.Split("", "isolated")])
    tk.add_special_tokens([AddedToken("<s>", normalized=False), AddedToken("</s>", normalized=False)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<s>{{ m.role }}\n{{ m.content }}</s>{% endfor %}<s>assistant\n"
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    counter = PromptCounter(str(tmp_path))
    messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]
    text = counter.render(messages)
    assert counter.token_ids(request(messages)) == tok(text, add_special_tokens=False)["input_ids"]
    assert counter.max_model_len == 512


def test_parallel_equals_inline_and_keeps_order(smollm2):
    rnd = random.Random(3)
    items = []
    for i in range(1500):
        if i % 97 == 0:
            items.append(FailedRequest(f"e{i}", "f.jsonl", i, "invalid_json", "bad"))
        else:
            words = " ".join(rnd.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rnd.randint(1, 50)))
            items.append(request([{"role": "system", "content": "Shared system prompt."},
                                  {"role": "user", "content": words}], cid=f"r{i}"))
    inline = list(smollm2.check_all(items, workers=1, chunk_size=64))
    parallel = list(smollm2.check_all(items, workers=2, chunk_size=64))
    assert inline == parallel
    assert [item.custom_id for item, _, _ in parallel] == [item.custom_id for item in items]
    for item, n, blocks in inline[:20]:
        assert n == (None if isinstance(item, FailedRequest) else smollm2.count(item))
        assert len(blocks) == (0 if n is None else n // 16 * 8)  # one digest per whole 16-token block


def test_context_check(tmp_path, smollm2):
    long = request([{"role": "user", "content": "word " * 50}], cid="long")
    n = smollm2.count(long)
    assert PromptCounter("smollm2", max_model_len=n + 1).check(long) is long
    err = PromptCounter("smollm2", max_model_len=n).check(long)  # no room for one completion token
    assert isinstance(err, FailedRequest) and err.code == "context_length_exceeded" and err.param == "messages"
    assert f"the prompt is {n} tokens" in err.message


def test_context_length_as_vllm_derives_it(tmp_path):
    assert context_length(str(embedded_model_dir())) == 8192
    base = {"max_position_embeddings": 4096, "model_type": "llama"}
    cases = [
        ({**base}, 4096),
        ({**base, "n_positions": 2048}, 2048),  # the smallest key
        ({**base, "rope_scaling": {"type": "linear", "factor": 2.0}}, 8192),
        ({**base, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, 4096),  # already scaled
        ({"model_type": "llama"}, 2048),  # vLLM's assumption when nothing says
        ({"text_config": {"max_position_embeddings": 1024}}, 1024),
    ]
    for i, (config, expected) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        assert context_length(str(folder)) == expected, config
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    assert context_length(str(folder)) == 512
    assert context_length(str(folder), 256) == 256
    with pytest.raises(ValueError, match="greater than the model's context"):
        context_length(str(folder), 4096)


def test_completion_upper_bound():
    assert completion_upper(request([], n=2, max_tokens=100), 50, 1024) == 200
    assert completion_upper(request([], max_completion_tokens=100), 1000, 1024) == 24  # the context stops it
    assert completion_upper(request([]), 1000, 1024) == 24  # no max_tokens: the rest of the context
    assert completion_upper(request([], n=3), 1000, 1024) == 72


# ---- the command --------------------------------------------------------------------------------
def mixed_inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [
        chat_line("a", "Name a fruit.", max_tokens=10),
        chat_line("b", "Name two fruits.", n=2, max_tokens=20),
        chat_line("c", "Tell me everything."),  # no max_tokens: the context left
        "{not json",
        chat_line("d", "x", temperature=9),
        chat_line("long", "word " * 300, max_tokens=5),
        chat_line("a", "duplicate id"),
    ]
    write_jsonl(folder / "one.jsonl", rows)
    write_jsonl(folder / "two.jsonl", [{"custom_id": "t", "messages": [
        {"role": "system", "content": "Be brief."}, *tool_turns("{\"city\": \"Paris\"}")], "tools": [WEATHER], "max_tokens": 7}])
    return folder


def counted(smollm2, folder, max_model_len=256):
    """What the command must report, by hand: per custom_id (prompt tokens, upper bound)."""
    out = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            body = row.get("body", row)
            if row["custom_id"] in out or body.get("temperature", 0) > 2:
                continue
            p = smollm2.count(request(body["messages"], body.get("tools")))
            room = max_model_len - p
            upper = body.get("n", 1) * (min(body["max_tokens"], room) if "max_tokens" in body else room)
            out[row["custom_id"]] = (p, upper)
    return out


def test_json_and_parquet(tmp_path, smollm2):
    folder = mixed_inputs(tmp_path)
    res = invoke("estimate", folder, "-m", "smollm2", "--max-model-len", "256", "--json",
                 "--rows-file", tmp_path / "rows.parquet", "--workers", "2", "--order", "prefix")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    hand = counted(smollm2, folder)
    valid = {k: v for k, v in hand.items() if k != "long"}
    prompt, upper = sum(p for p, _ in valid.values()), sum(u for _, u in valid.values())
    assert hand["long"][0] >= 256
    assert (r["requests"], r["valid"], r["invalid"]) == (8, 4, 4)
    assert r["errors_by_code"] == {"context_length_exceeded": 1, "duplicate_custom_id": 1,
                                   "invalid_json": 1, "invalid_parameter": 1}
    assert r["prompt_tokens"] == prompt and r["completion_tokens_upper"] == upper
    assert r["completion_tokens_expected"] == round(upper * 0.5) and r["completion_ratio"] == 0.5
    assert r["cost_usd_upper"] == pytest.approx((prompt + upper) * 0.055 / 1e6)
    assert r["cost_usd_expected"] == pytest.approx((prompt + upper * 0.5) * 0.055 / 1e6)
    assert r["gpu_hours_expected"] is None and r["price"]["source"] == "demo list price"
    assert [(f["file"].rsplit("/", 1)[1], f["requests"], f["invalid"]) for f in r["files"]] == [("one.jsonl", 7, 4), ("two.jsonl", 1, 0)]
    assert r["files"][1]["prompt_tokens"] == hand["t"][0]

    df = pl.read_parquet(tmp_path / "rows.parquet")
    assert df.columns == ["custom_id", "source_file", "source_line", "prompt_tokens", "completion_tokens_expected",
                          "completion_tokens_upper", "reasoning_tokens_upper", "cost_usd_expected", "cost_usd_upper", "error"]
    # in the run's order (error rows first, then by shared prefix): every line once
    assert df.height == 8 and sorted(zip(df["source_file"].str.split("/").list.last(), df["source_line"], strict=True)) == [
        *(("one.jsonl", i) for i in range(1, 8)), ("two.jsonl", 1)]
    assert df["error"].is_null().to_list() == [False] * 4 + [True] * 4
    rows = {(r["custom_id"], r["source_line"]): r for r in df.to_dicts()}
    for cid in valid:
        row = next(v for (c, _), v in rows.items() if c == cid and v["error"] is None)
        p, u = valid[cid]
        assert (row["prompt_tokens"], row["completion_tokens_upper"], row["completion_tokens_expected"]) == (p, u, u / 2)
        assert row["cost_usd_upper"] == pytest.approx((p + u) * 0.055 / 1e6) and row["error"] is None
    long = rows[("long", 6)]
    assert long["error"]["code"] == "context_length_exceeded" and long["prompt_tokens"] == hand["long"][0]
    assert long["completion_tokens_upper"] is None and long["cost_usd_upper"] is None
    assert rows[("a", 7)]["error"]["code"] == "duplicate_custom_id"


def test_cost_arithmetic(tmp_path):
    """Prices, ratio, throughput and GPU price from the command line, against hand-computed figures."""
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "Hi", max_tokens=100), chat_line("b", "Hello there", max_tokens=300, n=2)])
    res = invoke("estimate", src, "-m", "smollm2", "--json", "--price-input", "1", "--price-output", "4",
                 "--completion-ratio", "0.25", "--tokens-per-second", "1000", "--gpu-hour-usd", "3", "--workers", "1",
                 "--block-size", "16")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    p = r["prompt_tokens"]
    assert r["completion_tokens_upper"] == 700 and r["completion_tokens_expected"] == 175
    assert r["price"] == {"input": 1.0, "output": 4.0, "source": "demo list price (overridden)"}
    assert r["cost_usd_expected"] == pytest.approx((p * 1 + 175 * 4) / 1e6)
    assert r["cost_usd_upper"] == pytest.approx((p * 1 + 700 * 4) / 1e6)
    # GPU-hours count computed prompt tokens: less than billed where prompts share whole blocks
    assert r["gpu_hours_expected"] == pytest.approx((r["prompt_tokens_computed"] + 175) / 1000 / 3600)
    assert r["gpu_hours_upper"] == pytest.approx((r["prompt_tokens_computed"] + 700) / 1000 / 3600)
    assert 0 < r["prompt_tokens_computed"] < p
    assert r["compute_cost_usd_upper"] == pytest.approx((r["prompt_tokens_computed"] + 700) / 1000 / 3600 * 3)
    assert (r["completion_ratio_source"], r["throughput_source"]) == ("--completion-ratio", "--tokens-per-second")


def test_calibrate_from_a_report(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "Hi", max_tokens=100), chat_line("b", "Hello", max_tokens=300)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "_report.json").write_text(json.dumps({
        "model": MODEL, "requests": 2, "succeeded": 2, "prompt_tokens": 60, "completion_tokens": 100,
        "total_tokens": 160, "wall_seconds": 4.0, "engines": 2}))
    res = invoke("estimate", src, "-m", "smollm2", "--json", "--calibrate-from", run, "--gpu-hour-usd", "2", "--workers", "1")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["completion_ratio"] == pytest.approx(100 / 400) and r["completion_tokens_expected"] == 100
    assert r["tokens_per_second"] == pytest.approx(160 / 4.0 / 2)
    assert r["compute_cost_usd_expected"] == pytest.approx((r["prompt_tokens_computed"] + 100) / 20 / 3600 * 2)
    assert "includes engine start" in r["throughput_source"]
    res = invoke("estimate", src, "-m", "smollm2", "--calibrate-from", run, "--completion-ratio", "1", "--json", "--workers", "1")
    assert json.loads(res.stdout)["completion_ratio"] == 1  # the command line wins
    res = invoke("estimate", src, "-m", "smollm2", "--calibrate-from", tmp_path, "--workers", "1")
    assert res.exit_code == 1 and "no _report.json" in res.output


def test_table(tmp_path):
    folder = mixed_inputs(tmp_path)
    res = invoke("estimate", folder, "-m", "smollm2", "--max-model-len", "256", "--tokens-per-second", "500", "--workers", "1")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["file", "requests", "invalid", "prompt"]
    assert [line.split()[0].rsplit("/", 1)[-1] for line in lines[1:4]] == ["one.jsonl", "two.jsonl", "total"]
    assert lines[3].split()[1:3] == ["8", "4"]
    assert "8 requests, 4 invalid (context_length_exceeded ×1, duplicate_custom_id ×1, invalid_json ×1, invalid_parameter ×1)" in res.stdout
    assert "hosted, at $0.055/M input and $0.055/M output (demo list price)" in res.stdout
    assert "own GPUs, at 500 tokens/s per GPU (--tokens-per-second) and $2/GPU-hour" in res.stdout


def test_unknown_provider_and_unpriced_model(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "Hi", max_tokens=10)])
    res = invoke("estimate", src, "-m", "smollm2", "--provider", "nowhere", "--workers", "1")
    assert res.exit_code == 1 and "no price for model" in res.output and "--price-input" in res.output
    res = invoke("estimate", src, "-m", "smollm2", "--served-model-name", "my-model", "--json", "--workers", "1")
    r = json.loads(res.stdout)
    assert r["price"] is None and r["cost_usd_expected"] is None and r["model"] == "my-model"
    assert r["invalid"] == 0  # a run serving my-model from smollm2 also accepts the embedded name


@pytest.mark.parametrize("shared", [True, False])
def test_estimate_takes_the_order_run_takes(tmp_path, shared):
    """One Job decides the order for both commands: under --order auto, estimate counts prompt
    tokens in the order the run then takes, and both report the same decision."""
    docs = [f"document {d}: " + f"a long text about topic {d}, sentence after sentence. " * 40 for d in range(4)]
    # shared: 4 documents x 6 questions, the documents interleaved in the file (sorting groups them)
    rows = [chat_line(f"q{i}", (docs[i % 4] + f" Question {i}?") if shared
                      else f"question {i} about something else " + "x" * (i * 37 % 300)) for i in range(24)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("estimate", path, "-m", "smollm2", "--json", "--order-buffer", "8", "--workers", "1")
    assert res.exit_code == 0, res.output
    estimated = json.loads(res.stdout)
    ran = invoke("run", path, "-o", tmp_path / "out", "--engine", "fake", "-m", "smollm2", "-q",
                 "--order-buffer", "8")
    assert ran.exit_code == 0, ran.output
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert estimated["order"] == report["order"] == ("prefix" if shared else "input")
    assert estimated.get("order_auto") == report.get("order_auto")
