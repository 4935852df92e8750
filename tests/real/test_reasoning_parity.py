"""Our split of thinking from answer equals vLLM's OpenAI server's on the same engine outputs: the
same RequestOutput goes through vLLM's own `OpenAIServingChat.chat_completion_full_generator` and
through our engine's reading of outputs (engines/vllm.py), with the tiny reasoning model's tokenizer,
for each parser the tests name. No engine starts: only vLLM's serving and parser code runs."""

import asyncio
from types import SimpleNamespace

import pytest
from reasoning_model import tiny_reasoner

pytestmark = pytest.mark.engine

OUTPUTS = [  # (generated text, finish_reason): the template opened <think> in the prompt
    ("the sky scatters blue light</think>\n\nBecause of Rayleigh scattering.", "stop"),
    ("still thinking and thinking", "length"),
    ("<think>an opened thought</think>an answer", "stop"),
    ("</think>\n\nno thought at all", "stop"),
    ('short</think>{"ok": true}', "stop"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(tiny_reasoner())


def request_output(tokenizer, texts):
    from vllm.outputs import CompletionOutput, RequestOutput

    prompt = tokenizer.encode("<|im_start|>assistant\n<think>\n", add_special_tokens=False)
    outputs = [CompletionOutput(i, text, tokenizer.encode(text, add_special_tokens=False), None, None, finish)
               for i, (text, finish) in enumerate(texts)]
    return RequestOutput("r", None, prompt, None, outputs, finished=True)


def served(parser_name, tokenizer, creq, out):
    """What vLLM's OpenAI server answers for this output (its full, non-streaming generator)."""
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.parser.parser_manager import ParserManager

    server = object.__new__(OpenAIServingChat)
    server.parser_cls = ParserManager.get_parser(reasoning_parser_name=parser_name, tokenizer=tokenizer)
    server.enable_auto_tools, server._include_reasoning_tokens_details = False, True
    server.response_role, server.chat_template, server.chat_template_content_format = "assistant", None, "auto"
    server.default_chat_template_kwargs, server.enable_prompt_tokens_details = {}, False
    server.enable_per_request_metrics, server.enable_log_outputs, server.request_logger = False, False, None
    server.model_config, server.system_fingerprint = None, None
    parser = server._make_parser(creq, tokenizer, server._effective_chat_template_kwargs(creq))

    async def results():
        yield out

    response = asyncio.run(server.chat_completion_full_generator(
        creq, results(), "r", "m", [], tokenizer, SimpleNamespace(final_usage_info=None), parser=parser))
    return response


def ours(parser_name, tokenizer, req, creq, out):
    from vllm.parser.parser_manager import ParserManager

    from pipeline.engines.vllm import VLLMEngine

    engine = object.__new__(VLLMEngine)
    engine.tokenizer, engine.tool_parser_cls, engine.llm = tokenizer, None, SimpleNamespace(model_config=None)
    engine.parser_cls = ParserManager.get_parser(reasoning_parser_name=parser_name, tokenizer=tokenizer)
    return engine._result(0, req, creq, (), out)


@pytest.mark.parametrize("parser_name", ["deepseek_r1", "qwen3"])
@pytest.mark.parametrize("body", [{}, {"chat_template_kwargs": {"enable_thinking": False}},
                                  {"reasoning_effort": "none"}, {"include_reasoning": False}])
def test_our_split_is_the_servers(tokenizer, parser_name, body):
    from conftest import source

    from pipeline.engines.vllm import chat_request
    from pipeline.intake.requests import Context, parse_row

    req = parse_row({"messages": [{"role": "user", "content": "Why is the sky blue?"}], "n": 4, **body},
                    source=source(), line=1, ctx=Context())
    creq = chat_request(req)
    out = request_output(tokenizer, OUTPUTS[:4] if req.n == 4 else OUTPUTS)
    server, result = served(parser_name, tokenizer, creq, out), ours(parser_name, tokenizer, req, creq, out)
    assert [(c.message.reasoning, c.message.content, c.finish_reason) for c in server.choices] == [
        (c["reasoning_content"], c["content"], c["finish_reason"]) for c in result.choices]
    served_count = server.usage.completion_tokens_details.reasoning_tokens
    # vLLM's count, or more where its parser counts no thinking that the prompt opened (deepseek_r1
    # counts only between a generated <think> and </think>): then the tokens before </think>
    assert (
        result.reasoning_tokens == served_count if parser_name == "qwen3" else result.reasoning_tokens >= served_count
    )
    if parser_name == "deepseek_r1":  # 10 tokens before the first </think>, 3 between <think> and </think>
        assert (served_count, result.reasoning_tokens) == (3, 13)
    assert result.completion_tokens == server.usage.completion_tokens


def test_our_template_arguments_are_the_servers():
    """estimate renders with the same chat template arguments the engine gets from vLLM."""
    from conftest import source

    from pipeline.engines.vllm import chat_request, template_kwargs
    from pipeline.intake.requests import Context, parse_row
    from pipeline.models import render

    for body in ({}, {"reasoning_effort": "low"}, {"reasoning_effort": "none"},
                 {"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False, "x": 1}},
                 {"chat_template_kwargs": {"reasoning_effort": "low"}, "reasoning_effort": "high"}):
        req = parse_row(
            {"messages": [{"role": "user", "content": "q"}], **body}, source=source(), line=1, ctx=Context()
        )
        engine = {k: v for k, v in template_kwargs(chat_request(req)).items()
                  if k not in ("add_generation_prompt", "continue_final_message", "documents")}
        assert render.template_kwargs(req.params) == {k: v for k, v in engine.items() if v is not None}, body
