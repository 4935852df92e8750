"""Prompt tokens exactly as vLLM 0.32 counts them for a chat request, without vLLM.

`LLM.chat` / `LLM.enqueue_chat` (what `engines/vllm.py` calls) turn a conversation into prompt
token ids in three steps, repeated here with transformers and jinja2 only (imported lazily, so
that `estimate` starts fast and runs where vLLM and torch are not installed):

1. parse the messages (vllm/renderers/chat_utils.py `parse_chat_messages`): text parts joined
   with "\\n" for templates that take string content, kept as parts for templates that loop
   over them; None content becomes ""; assistant tool-call arguments, a JSON string, become a
   dict; developer messages become system ones when the template does not know that role;
2. render the model's chat template with the tools and add_generation_prompt=True
   (vllm/renderers/hf.py `safe_apply_chat_template`);
3. tokenize the text with add_special_tokens=False: the template writes BOS itself.

Images (image_url parts, data: URIs once intake has checked them): the template sees
{"type": "image"} parts (or, for string templates, the processor's image token per image), and
the model's HF processor (transformers' AutoProcessor, no weights) expands each placeholder by
the image's size, exactly as vLLM's multimodal processor does for Idefics3/SmolVLM, Qwen2-VL,
LLaVA, mllama and the like.

Audio (input_audio parts, checked by intake): the template sees {"type": "audio"} parts (or, for
string templates, the processor's audio token per audio), and the processor expands each
placeholder by the clip's length at its sampling rate (`models.audio.samples`), as vLLM's
multimodal processor does for Qwen2-Audio (one <|AUDIO|> per 40 ms, at most 30 s).

Not covered: Mistral-format tokenizers
(`tokenizer_mode mistral`) and vLLM's fallback templates for models that ship none.

Speed: added tokens (<|im_start|>, <|eot_id|>, ...) are matched before the tokenizer's
normalizer and pre-tokenizer run, so the text between two of them tokenizes on its own. Each
such segment's ids are kept in an LRU cache: a system prompt shared by a million rows is
tokenized once. A segment not in the cache is, for byte-level BPE tokenizers (GPT-2, Llama 3,
Qwen 2, SmolLM style), cut into the pre-tokenizer's pieces with its own regex and tokenized piece
by piece through a word cache; otherwise by the tokenizer in one batch. Probes at load time
check that these paths give exactly the ids of the whole text for this tokenizer; where one does
not (e.g. SentencePiece "prepend to the first word only"), the next slower one is used, down to
whole texts. `check_all` spreads the work over one process per core.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import chain, islice
from typing import Any

from pipeline.endpoints import ENDPOINTS
from pipeline.exits import UserError
from pipeline.models.audio import samples
from pipeline.models.names import _json_file, context_length, resolve_model, score_join
from pipeline.models.prefix import chained_digests
from pipeline.models.render import (
    PromptError,
    audio_data,
    content_format,
    context_problem,
    conversation,
    engine_tools,
    image_urls,
    template_kwargs,
)
from pipeline.records import FailedRequest, Problem, Request

log = logging.getLogger("pipeline.models.tokens")

# config.json keys that bound the context, as vLLM reads them (derive_max_model_len_and_key).


class PromptCounter:
    """A model's chat template and tokenizer: prompt token ids and counts for Requests, and the
    context check vLLM applies before generation (`check`)."""

    # Characters of segment text the LRU cache holds (about as many bytes again for the ids).
    cache_chars = 1 << 24

    def __init__(self, model: str, max_model_len: int | None = None, *, tokenizer: str | None = None,
                 trust_remote_code: bool = False):
        from transformers import AutoTokenizer
        from transformers.utils.chat_template_utils import render_jinja_template

        self.model, self.tokenizer_name, self.trust_remote_code = model, tokenizer, trust_remote_code
        path = resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                resolve_model(tokenizer) if tokenizer else path, trust_remote_code=trust_remote_code)
        except OSError as e:  # not a folder, not in the Hugging Face cache, no network
            raise UserError(f"cannot load the tokenizer of {model}: {e}\nHint: pass a local model folder, "
                             "or a hub id whose files are in the Hugging Face cache") from None
        self.max_model_len = context_length(path, max_model_len)
        self._backend = self.tokenizer.backend_tokenizer
        self._backend.no_truncation()  # a tokenizer.json may carry truncation; vLLM's prompts are not cut
        self._backend.no_padding()
        self._render_jinja = render_jinja_template
        self._template_kwargs = dict(self.tokenizer.special_tokens_map)  # what apply_chat_template adds
        self._templates: dict[bool, tuple[str, str, bool]] = {}
        self._mm = None  # the HF processor, for prompts with images
        self.score_join = score_join(path)  # a cross-encoder's pair prompt (None: not a cross-encoder)
        # A plain prompt gets the tokenizer's special tokens, except an encoder-decoder's (Whisper's
        # decoder prompt carries its own; vLLM's processor adds none): endpoints/speech.py
        self._plain_special = not (_json_file(path, "config.json") or {}).get("is_encoder_decoder", False)
        if self._plain_special and self.score_join is None:  # a speech model or a cross-encoder has no chat
            self._template(None)  # fail now, not on every row, when the model has no chat template
        self._split, self._added = _added_token_splitter(self._backend)
        self._words = _pre_token_splitter(self._backend)
        self._word_ids: dict[str, tuple[int, ...]] = {}
        # The fastest way that gives exactly the ids of whole texts, for this tokenizer.
        if self._words is not None and not self._exact():
            self._words = None
        if not self._exact():
            log.info("%s: segment-wise tokenization differs from whole texts; tokenizing whole prompts", model)
            self._split = _whole

    def __reduce__(self):  # spawned workers load their own copy
        return _counter, (self.model, self.max_model_len, self.tokenizer_name, self.trust_remote_code)

    # ---- one request ---------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               kwargs: dict[str, Any] | None = None) -> str:
        """The prompt text vLLM renders for these messages and tools, with the request's chat
        template arguments (`render.template_kwargs`: enable_thinking, reasoning_effort, ...)."""
        template, content_format, developer = self._template(tools)
        mm = self._processor if image_urls(messages) or audio_data(messages) else None
        conv = conversation(messages, content_format, developer_role=developer,
                            image_token=getattr(mm, "image_token", "<image>"),
                            audio_token=getattr(mm, "audio_token", "<|AUDIO|>"))
        try:
            texts, _ = self._render_jinja([conv], tools=tools, chat_template=template,
                                          **{**self._template_kwargs, **(kwargs or {}), "add_generation_prompt": True})
        except Exception as e:  # vLLM answers a template's exception with a 400 for the request
            raise PromptError(f"the chat template rejected the conversation: {e}") from e
        return texts[0]

    def token_ids(self, request: Request) -> list[int]:
        """The prompt token ids vLLM gives the engine for this request (a chat or completions one)."""
        plain = ENDPOINTS[request.endpoint].prompts
        if plain is not None:  # plain prompts (completions, a clip's): the tokenizer's special tokens, no template
            return [i for prompt in plain(request) for i in (prompt if isinstance(prompt, list) else
                    self.tokenizer(prompt, add_special_tokens=self._plain_special)["input_ids"])]
        text = self.render(request.messages, engine_tools(request), template_kwargs(request.body))
        media = _media(request.messages)
        return list(self._media_ids(text, *media) if any(media) else self._ids([text])[0])

    def count(self, request: Request) -> int:
        return len(self.token_ids(request))

    def check(self, request: Request) -> Request | FailedRequest:
        """The request, or the FailedRequest vLLM's answer to it becomes (context too small, template error)."""
        try:
            return self.verdict(request, self.count(request))
        except PromptError as e:
            return _template_error(request, e)

    def verdict(self, request: Request, prompt_tokens: int) -> Request | FailedRequest:
        # vLLM refuses a prompt that leaves no room for one completion token. A pooling request's
        # inputs are separate prompts: the engine answers for each.
        endpoint = ENDPOINTS[request.endpoint]
        if endpoint.parts is not None:  # each of its engine prompts (a clip's) must fit on its own
            prompt_tokens = -(-prompt_tokens // endpoint.parts(request))
        problem = context_problem(prompt_tokens, self.max_model_len,
                                  field=endpoint.prompt_field) if endpoint.completes else None
        if problem is None:
            return request
        return FailedRequest.about(problem, request)

    # ---- a stream of rows, on all cores ----------------------------------------------------------
    def check_all(
        self, items: Iterable[Request | FailedRequest], *, workers: int | None = None, chunk_size: int = 512,
        block_size: int = 16,
    ) -> Iterator[tuple[Request | FailedRequest, int | None, bytes]]:
        """(item, prompt tokens, block digests) for every item, in order: Requests are counted and
        checked (a Request that fails becomes a FailedRequest, with its count when it has one);
        RowErrors pass with None. The digests (schedule.chained_digests) are of the prompt's
        whole `block_size`-token blocks: what vLLM's prefix cache can reuse. With workers > 1,
        chunks go to that many processes, a bounded number at a time, so memory stays flat
        however long the stream."""
        workers = workers or cpu_count()
        pool = None
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(_START_METHOD),
                                       initializer=_init_worker, initargs=(self,))
        pending: deque = deque()
        items = iter(items)
        try:
            while chunk := list(islice(items, chunk_size)):
                work = [_work(r, pairs=self.score_join is not None) for r in chunk if isinstance(r, Request)]
                pending.append((chunk, pool.submit(_count_in_worker, work, block_size) if pool
                                else self.count_many(work, block_size)))
                while len(pending) > (2 * workers if pool else 0):
                    yield from self._verdicts(*pending.popleft())
            while pending:
                yield from self._verdicts(*pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def count_many(self, work: list[tuple[list, list | None]], block_size: int = 16) -> list[tuple[int, bytes] | str]:
        """(prompt tokens, block digests) of (messages, tools, template kwargs) (`_work`); a str where the
        template refuses one. An embeddings request's inputs: their tokens, no digests."""
        texts: list[str | PromptError | list] = []
        for messages, tools, kwargs in work:
            try:
                texts.append(tools if messages is None else self.render(messages, tools, kwargs))
            except PromptError as e:
                texts.append(e)
        media = [_media(messages) if messages is not None else ([], []) for messages, _, _ in work]
        ids = iter(self._ids([t for t, m in zip(texts, media, strict=True) if isinstance(t, str) and not any(m)]))
        step = block_size * array("i").itemsize
        # An image's (audio's) placeholder ids are the same for every image (audio): no prefix digests.
        return [(self._input_tokens(t), b"") if isinstance(t, list) else str(t) if not isinstance(t, str)
                else (len(self._media_ids(t, *m)), b"") if any(m)
                else (len(i := next(ids)), chained_digests(i.tobytes(), step, whole_blocks=True))
                for t, m in zip(texts, media, strict=True)]

    def _input_tokens(self, inputs: list[Any]) -> int:
        """The tokens of an embeddings request's inputs, as vLLM tokenizes a plain prompt (with the
        tokenizer's special tokens); token-id inputs are taken as they are; a (query, document)
        pair as a cross-encoder's one prompt (`score_join`)."""
        return sum(len(one) if isinstance(one, list) else len(self._pair_ids(*one)) if isinstance(one, tuple)
                   else len(self.tokenizer(one, add_special_tokens=self._plain_special)["input_ids"])
                   for one in inputs)

    def _pair_ids(self, query: str, document: str) -> list[int]:
        """A cross-encoder's prompt of a pair, as vLLM's scoring tokenizes it without a score template."""
        if self.score_join == "pair":
            return self.tokenizer(text=query, text_pair=document)["input_ids"]
        return self.tokenizer(text=query + document)["input_ids"]

    # ---- images and audio ----------------------------------------------------------------------
    @property
    def _processor(self):
        """The model's HF processor (image and audio preprocessing, placeholder expansion), loaded once."""
        if self._mm is None:
            from transformers import AutoProcessor

            self._mm = AutoProcessor.from_pretrained(
                resolve_model(self.model), trust_remote_code=self.trust_remote_code
            )
        return self._mm

    def _media_ids(self, text: str, urls: list[str], clips: list[str]) -> array:
        """The ids of a rendered prompt with images and audio: the processor expands each image's
        placeholder by the image's size, and each audio's by the clip's length (given as silence of
        the samples vLLM hands it: the count depends on the length only), as vLLM's multimodal
        processor does."""
        import base64
        import io

        kwargs: dict[str, Any] = {}
        if urls:
            from PIL import Image

            kwargs["images"] = [[Image.open(io.BytesIO(base64.b64decode(u.partition(",")[2]))).convert("RGB")
                                 for u in urls]]
        if clips:
            import numpy as np

            rate = self._processor.feature_extractor.sampling_rate
            kwargs.update(audio=[np.zeros(samples(c, rate), np.float32) for c in clips], sampling_rate=rate)
        ids = self._processor(text=[text], add_special_tokens=False, **kwargs)["input_ids"][0]
        return array("i", [int(i) for i in ids])

    def _verdicts(self, chunk, counts):
        counts = iter(counts if isinstance(counts, list) else counts.result())
        for item in chunk:
            if not isinstance(item, Request):
                yield item, None, b""
                continue
            counted = next(counts)
            if isinstance(counted, str):
                yield _template_error(item, PromptError(counted)), None, b""
            else:
                yield self.verdict(item, counted[0]), *counted

    # ---- tokenization -------------------------------------------------------------------------
    def _ids(self, texts: list[str]) -> list[array]:
        """Token ids of rendered texts: added tokens by lookup, the segments between them
        through the LRU cache, the missing ones tokenized together."""
        pieces = [self._split(t) for t in texts]
        known: dict[str, array | None] = {}
        missing: list[str] = []
        for parts in pieces:
            for seg in parts[::2]:
                if seg and seg not in known:
                    ids = known[seg] = self._cache.get(seg)
                    if ids is None:
                        missing.append(seg)
                    else:
                        self._cache.move_to_end(seg)
        for seg, ids in zip(missing, self._encode(missing), strict=True):
            known[seg] = self._remember(seg, ids)
        out = []
        for parts in pieces:
            ids = array("i")
            for i, part in enumerate(parts):
                if i % 2:
                    tid = self._added.get(part)
                    ids.append(self._added_id(part) if tid is None else tid)
                elif part:
                    ids.extend(known[part])
            out.append(ids)
        return out

    def _encode(self, segments: list[str]) -> list[array]:
        """Token ids of segments. Plain-ASCII segments of a byte-level BPE tokenizer go word by
        word (its pre-tokens) through a word cache; the others through the tokenizer, in one batch."""
        out: list[Any] = [None] * len(segments)
        if self._words is not None:
            for i, seg in enumerate(segments):
                if not _NOT_PLAIN_ASCII(seg):
                    words = self._words(seg)
                    if sum(map(len, words)) == len(seg):  # the pattern covered the whole segment
                        out[i] = words
            seen = set(chain.from_iterable(words for words in out if words))
            if len(self._word_ids) + len(seen) > _MAX_WORDS:
                self._word_ids.clear()
            new = list(seen - self._word_ids.keys())
            for w, enc in zip(new, self._batch(new), strict=True):
                self._word_ids[w] = tuple(enc.ids)
            word_ids = self._word_ids.__getitem__
            for i, words in enumerate(out):
                if words is not None:
                    out[i] = array("i", chain.from_iterable(map(word_ids, words)))
        rest = [i for i, ids in enumerate(out) if ids is None]
        for i, enc in zip(rest, self._batch([segments[i] for i in rest]), strict=True):
            out[i] = array("i", enc.ids)
        return out

    def _batch(self, texts: list[str]) -> list:
        if len(texts) > 1:
            return self._backend.encode_batch_fast(texts, add_special_tokens=False)
        return [self._backend.encode(t, add_special_tokens=False) for t in texts]

    def _remember(self, seg: str, ids: array) -> array:
        self._cache[seg] = ids
        self._cached_chars += len(seg)
        while self._cached_chars > self.cache_chars:
            old, _ = self._cache.popitem(last=False)
            self._cached_chars -= len(old)
        return ids

    def _reset_cache(self) -> None:
        self._cache: OrderedDict[str, array] = OrderedDict()
        self._cached_chars = 0
        self._word_ids.clear()

    def _added_id(self, piece: str) -> int:
        """The id of an added token matched with the whitespace its lstrip/rstrip absorbs."""
        for text in (piece.strip(), piece.lstrip(), piece.rstrip()):
            if text in self._added:
                return self._added[text]
        raise KeyError(piece)

    def _exact(self) -> bool:
        """Do the cached paths give the ids of the whole text, for this tokenizer? Probes with
        added tokens, whitespace runs, contractions, digits, punctuation and non-ASCII text."""
        self._reset_cache()
        marks = sorted(self._added, key=len)[:6] or ["<s>"]
        probes = [f"{m}x{m} y\n{m}\n z{m}  {m}é 中文{m}\t1 2{m}" for m in marks]
        probes += ["Don't stop: I'LL see 12345 items...  ok?!\n\n\tyes -- no\r\n end  ", " a", "a ", "\n", "   "]
        for conv in ([{"role": "user", "content": "Hi  there\n\n"}, {"role": "assistant", "content": "\tHello! 42"},
                      {"role": "user", "content": "é 中文 ok"}],
                     [{"role": "system", "content": " Be brief.\n"}, {"role": "user", "content": "Hi"}]
                     ) if self.score_join is None else ():  # a cross-encoder has no chat template
            with contextlib.suppress(PromptError, UserError):  # a template may refuse one (a speech model has none)
                probes.append(self.render(conv))
        return [list(ids) for ids in self._ids(probes)] == [
            self._backend.encode(p, add_special_tokens=False).ids for p in probes]

    def _template(self, tools) -> tuple[str, str, bool]:
        """(template, content format, knows the developer role), as vLLM picks them: the
        tokenizer's template (its tool_use variant when tools are given)."""
        key = tools is not None
        if key not in self._templates:
            try:
                text = self.tokenizer.get_chat_template(None, tools)
            except ValueError as e:
                raise UserError(f"{self.model} has no chat template ({e}); estimate needs the template "
                                 "vLLM would use. Hint: use a model that ships one") from None
            developer = '"developer"' in text or "'developer'" in text
            self._templates[key] = (text, content_format(text), developer)
        return self._templates[key]


def _work(request: Request, pairs: bool = False) -> tuple[list[dict[str, Any]] | None, Any, dict[str, Any] | None]:
    """What counting a request's prompt needs: (messages, tools, chat template arguments), or
    (None, plain prompts, None) for the other endpoints: a completion's prompt, the inputs of an
    embeddings request, the texts a score or rerank request embeds (each query once, each document);
    on a cross-encoder (`pairs`), its (query, document) pairs, each joined into one prompt."""
    endpoint = ENDPOINTS[request.endpoint]
    if pairs and endpoint.pairs is not None:
        return None, [tuple(pair) for pair in endpoint.pairs(request)], None
    plain = endpoint.prompts
    if plain is not None:
        return None, plain(request), None
    return request.messages, engine_tools(request), template_kwargs(request.body)


def _media(messages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """A conversation's image URLs and input_audio data, in order."""
    return image_urls(messages), audio_data(messages)


def _template_error(request: Request, e: PromptError) -> FailedRequest:
    return FailedRequest.about(Problem("invalid_request", str(e), "messages"), request)


def _whole(text: str) -> list[str]:
    return [text]


# The word path only sees plain ASCII (printable, \t, \n, \r), where Python's regex engines
# read \s, \p{L} and \p{N} as the tokenizer's Oniguruma does.
_NOT_PLAIN_ASCII = re.compile(r"[^\t\n\r\x20-\x7e]").search
# GPT-2's pre-tokenizer pattern (byte-level BPE with use_regex), \p{L} and \p{N} written for
# that ASCII: the built-in re runs it faster than the regex module runs the original.
_GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")
_MAX_WORDS = 1 << 20  # the word cache starts over beyond this many distinct words


def _pre_token_splitter(backend):
    """For a byte-level BPE tokenizer whose pre-tokenizer is one regex (GPT-2's, or a Split
    pattern as in Llama 3 and Qwen 2) and which has no normalizer: that regex's findall, which
    cuts text into the pieces the BPE model sees one by one. None for any other tokenizer."""
    pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else {}
    if backend.normalizer is not None or type(backend.model).__name__ != "BPE" or any(
            t.single_word for t in backend.get_added_tokens_decoder().values()):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return _GPT2_ASCII.findall
    steps = pre.get("pretokenizers", ()) if pre.get("type") == "Sequence" else ()
    if [p.get("type") for p in steps] != ["Split", "ByteLevel"]:
        return None
    split, byte_level = steps
    if (split.get("behavior") != "Isolated" or split.get("invert") or "Regex" not in split.get("pattern", {})
            or byte_level.get("use_regex", True) or byte_level.get("add_prefix_space")):
        return None
    import regex  # a transformers dependency; it knows \p{L} as the tokenizer's Oniguruma does

    try:
        return regex.compile(split["pattern"]["Regex"]).findall
    except regex.error:
        return None


def _added_token_splitter(backend) -> tuple[Any, dict[str, int]]:
    """A function splitting text at the added tokens the tokenizer matches in the raw text
    (re.split: text, token, text, ...), and the ids of those tokens. Tokens matched after
    normalization, or only as whole words, stay inside the segments: the tokenizer finds them."""
    has_normalizer = backend.normalizer is not None
    added, patterns = {}, []
    for tid, tok in backend.get_added_tokens_decoder().items():
        if tok.single_word or (tok.normalized and has_normalizer) or not tok.content:
            continue
        added[tok.content] = tid
        patterns.append((len(tok.content), (r"\s*" if tok.lstrip else "") + re.escape(tok.content)
                         + (r"\s*" if tok.rstrip else "")))
    if not patterns:
        return _whole, added
    # Longest first: at one position the longest added token wins, as in the tokenizer.
    return re.compile("(" + "|".join(p for _, p in sorted(patterns, reverse=True)) + ")").split, added


# ---- parsing the messages as vLLM does ---------------------------------------------------------
_START_METHOD = "fork" if sys.platform == "linux" else "spawn"
_worker: PromptCounter | None = None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_worker(counter: PromptCounter) -> None:
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    torch = sys.modules.get("torch")
    if torch is not None:
        # Forked from a process whose torch ran a parallel region (a model built in-process, say),
        # GNU OpenMP's thread pool is gone in the child and its next parallel region (an audio
        # processor's stft) waits forever; one intra-op thread runs inline and needs no pool.
        torch.set_num_threads(1)
    _worker = counter


def _count_in_worker(work, block_size):
    return _worker.count_many(work, block_size)


def _counter(model, max_model_len, tokenizer, trust_remote_code) -> PromptCounter:
    return PromptCounter(model, max_model_len, tokenizer=tokenizer, trust_remote_code=trust_remote_code)
