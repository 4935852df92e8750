"""Transcription and translation requests on vLLM's offline engine, made as vLLM's own
speech-to-text server makes them (vllm/entrypoints/speech_to_text/base/serving.py), from the same
parts: the batch line's body validated by `run_batch`'s own `BatchTranscriptionRequest` /
`BatchTranslationRequest`; the audio decoded by vLLM's `load_audio` at the model's sample rate
and cut by its `split_audio` into the model's clips (30 s for Whisper); the language detected by
the model's own detection prompt where the request names none; one prompt per clip from the
model class (`get_generation_prompt`), with vLLM's sampling parameters and token bound; the
clips' texts joined as vLLM joins them, and verbose_json's segments read by vLLM's own reader.
Imported only inside engine workers (vllm.py builds one `SpeechQueue` on the first such request).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import vllm.envs as envs
from vllm.entrypoints.launchers.run_batch import BatchTranscriptionRequest, BatchTranslationRequest
from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
from vllm.entrypoints.speech_to_text.base.serving import (
    SpeechToTextBaseServing,
    asr_inter_chunk_separator,
)
from vllm.entrypoints.speech_to_text.transcription.protocol import TranscriptionSegment
from vllm.entrypoints.speech_to_text.translation.protocol import TranslationSegment
from vllm.model_executor.model_loader import get_model_cls
from vllm.model_executor.models.interfaces import supports_transcription
from vllm.multimodal.audio import get_audio_duration, split_audio
from vllm.multimodal.media.audio import load_audio
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

from pipeline.engines.base import Result
from pipeline.records import Problem, Request

TASKS = {"transcriptions": ("transcribe", BatchTranscriptionRequest, TranscriptionSegment),
         "translations": ("translate", BatchTranslationRequest, TranslationSegment)}


class Refusal(Exception):
    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


@dataclass
class _Job:
    """One request in flight: its clips, and each clip's output once it is done."""

    seq: int
    req: Request
    sreq: Any  # vLLM's validated request
    clips: list[Any]
    offsets: list[float]
    seconds: float
    outputs: dict[int, Any] = field(default_factory=dict)


class SpeechQueue:
    def __init__(self, llm):
        model_config = llm.model_config
        self.llm, self.model_config = llm, model_config
        self.model_cls = get_model_cls(model_config)
        if not supports_transcription(self.model_cls):
            raise Refusal(Problem("unsupported_endpoint", f"{model_config.model} is not a speech-to-text model "
                                  "vLLM serves (Whisper, Voxtral, Granite Speech...): it cannot answer audio "
                                  "transcriptions or translations"))
        self.configs = {
            task: self.model_cls.get_speech_to_text_config(model_config, task) for task, _, _ in TASKS.values()
        }
        self.tokenizer = llm.get_tokenizer()
        self.defaults = model_config.get_diff_sampling_param()
        self.jobs: dict[str, tuple[_Job, int | None]] = {}  # engine request id -> (job, clip index; None: detection)

    def add(self, seq: int, req: Request, external_id) -> None:
        """Validate, decode and cut the request's audio, and enqueue its first engine requests."""
        task, cls, _ = TASKS[req.endpoint]
        try:
            sreq = cls.model_validate({**req.body, "model": None})
            sreq.language = self.model_cls.validate_language(sreq.language)
        except Exception as e:  # pydantic's ValidationError, vLLM's ValueError for a language it has not
            raise Refusal(Problem("invalid_parameter", f"vLLM refused the request: {_first_line(e)}")) from None
        if sreq.response_format == "verbose_json" and not self.model_cls.supports_segment_timestamp:
            raise Refusal(
                Problem(
                    "unsupported_parameter",
                    "response_format verbose_json: this model gives no segment timestamps",
                    "response_format",
                )
            )
        clips, seconds = self._clips(req.body["file_url"], self.configs[task])
        offsets = [0.0]
        for clip in clips[:-1]:
            offsets.append(offsets[-1] + clip.shape[-1] / self.configs[task].sample_rate)
        job = _Job(seq, req, sreq, clips, offsets, seconds)
        if sreq.language is None and getattr(self.model_cls, "supports_explicit_language_detection", False):
            prompt = self.model_cls.get_language_detection_prompt(clips[0], self.configs[task])
            params = SamplingParams(
                max_tokens=1,
                temperature=0.0,
                allowed_token_ids=self.model_cls.get_language_token_ids(self.tokenizer),
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            try:
                [rid] = self.llm.enqueue([prompt], [params], use_tqdm=False)
            except Exception as e:  # noqa: BLE001 - vLLM's refusal of the prompt
                raise Refusal(_problem(e)) from None
            self.jobs[external_id(rid)] = (job, None)
            return
        self._enqueue_clips(job, external_id)

    def _clips(self, url: str, config) -> tuple[list[Any], float]:
        """vLLM's `_decode_and_chunk_speech`: the audio at the model's rate, cut into its clips."""
        data = base64.b64decode(url.partition(",")[2])
        try:
            with io.BytesIO(data) as buf:
                y, sr = load_audio(
                    buf,
                    sr=config.sample_rate,
                    mono=True,
                    max_duration_s=envs.VLLM_MAX_AUDIO_DECODE_DURATION_S,
                    max_decode_bytes=envs.VLLM_MAX_AUDIO_DECODE_BYTES,
                )
        except Exception as e:  # noqa: BLE001 - vLLM's ValueError (too long) or a decoder's
            raise Refusal(
                Problem("invalid_audio", f"vLLM could not decode the audio: {_first_line(e)}", "file_url")
            ) from None
        seconds = get_audio_duration(y=y, sr=sr)
        if not (
            config.allow_audio_chunking and config.max_audio_clip_s is not None and seconds > config.max_audio_clip_s
        ):
            return [y], seconds
        return split_audio(
            audio_data=y,
            sample_rate=int(sr),
            max_clip_duration_s=config.max_audio_clip_s,
            overlap_duration_s=config.overlap_chunk_second,
            min_energy_window_size=config.min_energy_split_window_size,
        ), seconds

    def _enqueue_clips(self, job: _Job, external_id) -> None:
        task = TASKS[job.req.endpoint][0]
        prompts = []
        for clip in job.clips:
            params = job.sreq.build_stt_params(
                audio=clip, stt_config=self.configs[task], model_config=self.model_config, task_type=task
            )
            prompt = self.model_cls.get_generation_prompt(params)
            if job.sreq.response_format == "verbose_json":  # vLLM's _preprocess_verbose_prompt
                decoder = prompt["decoder_prompt"]
                decoder["prompt"] = decoder["prompt"].replace("<|notimestamps|>", "<|0.00|>")
            prompts.append(prompt)
        max_tokens = get_max_tokens(self.model_config.max_model_len, job.sreq.max_completion_tokens, 0, self.defaults)
        params = job.sreq.to_sampling_params(max_tokens, self.defaults)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        if job.sreq.response_format == "verbose_json":
            params.logprobs = 1
        try:
            ids = self.llm.enqueue(prompts, [params] * len(prompts), use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - vLLM's refusal of the prompt
            raise Refusal(_problem(e)) from None
        for i, rid in enumerate(ids):
            self.jobs[external_id(rid)] = (job, i)

    def owns(self, request_id: str) -> bool:
        return request_id in self.jobs

    def finished(self, out, external_id) -> Result | None:
        """A finished engine request: the job's Result once its last clip is done, else None."""
        job, index = self.jobs.pop(out.request_id)
        if index is None:  # the language detection
            try:
                job.sreq.language = self.model_cls.parse_language_detection_output(
                    list(out.outputs[0].token_ids), self.tokenizer
                )
                self._enqueue_clips(job, external_id)
            except Exception as e:  # noqa: BLE001 - one request's failure must not stop the engine
                return Result(job.seq, error=_problem(e))
            return None
        job.outputs[index] = out
        if len(job.outputs) < len(job.clips):
            return None
        try:
            return self._result(job)
        except Exception as e:  # noqa: BLE001 - a bug in reading one output must not take the engine down
            return Result(
                job.seq,
                error=Problem("output_error", f"reading the engine's output failed: {_first_line(e)}"),
                prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in job.outputs.values()),
            )

    def _result(self, job: _Job) -> Result:
        task, _, segment_class = TASKS[job.req.endpoint]
        outs = [job.outputs[i] for i in range(len(job.clips))]
        separator = asr_inter_chunk_separator(job.sreq.language, self.model_cls.no_space_languages)
        audio = None
        if job.sreq.response_format == "verbose_json":
            segments = [
                s
                for out, start in zip(outs, job.offsets, strict=True)
                for s in self._segments(out.outputs[0], job.sreq, segment_class, start)
            ]
            text = separator.join(s.text for s in segments)
            audio = {"segments": [s.model_dump() for s in segments], "language": job.sreq.language}
        else:
            text = separator.join(self.model_cls.post_process_output(out.outputs[0].text) for out in outs)
        cut = any(out.outputs[0].finish_reason == "length" for out in outs)
        choice = {
            "index": 0,
            "content": text,
            "tool_calls": None,
            "logprobs": None,
            "reasoning_content": None,
            "finish_reason": "length" if cut else "stop",
        }
        completion = sum(len(out.outputs[0].token_ids) for out in outs)
        return Result(
            job.seq,
            [choice],
            prompt_tokens=sum(len(out.prompt_token_ids or ()) for out in outs),
            completion_tokens=completion,
            cached_tokens=0,
            audio=audio,
            choice_tokens=[completion],
        )

    def _segments(self, output, sreq, segment_class, start: float) -> list[Any]:
        """vLLM's own segment reader over one clip's tokens; none where the clip gave no text
        token (its reader needs one: a clip answered with the end token alone)."""
        tokens = tuple(output.token_ids)
        if len([t for t in tokens if t != self.tokenizer.eos_token_id]) < 1:
            return []
        reader = SimpleNamespace(tokenizer=self.tokenizer)  # what the reader uses of vLLM's server
        return SpeechToTextBaseServing._get_verbose_segments(
            reader,
            tokens=tokens,
            log_probs=output.logprobs,
            request=sreq,
            segment_class=segment_class,
            start_time=start,
        )

    def pending(self) -> int:
        return len({id(job) for job, _ in self.jobs.values()})


def _problem(e: BaseException) -> Problem:
    """vLLM's exception as the request's Problem; EngineDeadError (its engine core is gone) is the
    engine's death, not a refusal: raised again, it ends the worker, which restarts it."""
    if isinstance(e, EngineDeadError):
        raise e
    if isinstance(e, Refusal):
        return e.problem
    return Problem("invalid_request", f"vLLM refused the audio request: {_first_line(e)}", "file_url")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n")[:3])[:500]
