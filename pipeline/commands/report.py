"""`pipeline report DIR`: a run report people look at. One self-contained HTML file (plotly's
JavaScript inlined: no network needed to view it) and a terminal summary.

It reads the output folder as a rerun would (committed parts only): requests, errors by code
with example rows, token distributions, finish reasons, throughput over the run and per engine,
the share of prompt tokens served from cache, cost, the slowest and longest requests, a sample of
outputs, and with `--compare PREV_DIR` the change from a previous run.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from pipeline.output.folder import Output, OutputConflict
from pipeline.output.formats import summary
from pipeline.output.humane import duration, rate, share, trial_text, usd
from pipeline.output.stats import thinking_text
from pipeline.storage import Location
from pipeline.verdicts.state import job_state, state_text

EXAMPLES_PER_CODE = 3
TOP = 10
SAMPLE = 10


@dataclass
class RunData:
    display: str
    report: dict[str, Any]
    rows: Any  # polars DataFrame of the committed rows
    commits: list[dict[str, Any]]


def load(url: str, storage_options: dict[str, Any] | None = None) -> RunData:
    import polars as pl

    out = Output(Location.of(url, storage_options))
    state = out.job_state()
    report = out.read_report()
    frames = [_part_rows(out.loc.child(rec["part"])) for rec in state.records]
    rows = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return RunData(out.display, report, rows, state.records)


def _part_rows(part: Location):
    """A committed part's rows; a part that is missing or cannot be read is the folder's damage,
    said as such (OutputConflict), never a traceback."""
    import io

    import polars as pl

    data = part.cat()
    damage = "is missing" if data is None else "is empty" if not data else None
    if damage is None:
        try:
            if part.name.endswith(".parquet"):
                return pl.read_parquet(io.BytesIO(data))
            return pl.DataFrame([summary(json.loads(line)) for line in data.splitlines() if line.strip()])
        except Exception as e:
            damage = f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    raise OutputConflict(f"the committed part {part.display} {damage}: the output folder was changed by "
                         "something else. Hint: rerun the job into a new --output folder (or with --overwrite)")


def figures(d: RunData) -> dict[str, Any]:
    """The numbers the page and the terminal show."""
    import polars as pl

    r, rows = d.report, d.rows
    n = rows.height
    errors = rows.filter(pl.col("error").is_not_null()) if n else rows
    ok = rows.filter(pl.col("error").is_null()) if n else rows
    prompt = int(ok["prompt_tokens"].sum() or 0) if n else 0
    cached = int(ok["cached_tokens"].sum() or 0) if n and "cached_tokens" in ok.columns else 0
    codes: dict[str, list[dict[str, Any]]] = {}
    for row in errors.iter_rows(named=True):
        e = row["error"]
        examples = codes.setdefault(e["code"], [])
        if len(examples) < EXAMPLES_PER_CODE:
            examples.append({"custom_id": row["custom_id"], "where": f"{row.get('source_file')}:{e.get('line')}",
                             "message": e["message"]})
    counts = errors["error"].struct.field("code").value_counts().to_dicts() if errors.height else []
    return {
        "requests": n, "succeeded": ok.height, "failed": errors.height,
        "errors_by_code": {c["code"]: c["count"] for c in sorted(counts, key=lambda c: -c["count"])},
        "examples": codes,
        "prompt_tokens": prompt, "completion_tokens": int(ok["completion_tokens"].sum() or 0) if n else 0,
        "cached_tokens": cached, "cached_ratio": (cached / prompt) if prompt else 0.0,
        "images": int(ok["images"].sum() or 0) if n and "images" in ok.columns else 0,
        "reasoning_tokens": int(ok["reasoning_tokens"].sum() or 0) if n and "reasoning_tokens" in ok.columns else 0,
        "estimated_cost": float(rows["estimated_cost"].sum() or 0.0) if n else 0.0,
        "price": r.get("price"), "wall_seconds": r.get("wall_seconds"),
        "requests_per_second": r.get("requests_per_second"),
        "generated_tokens_per_second": r.get("generated_tokens_per_second"),
        "model": r.get("model"), "engines": r.get("engines"), "trial": r.get("trial"),
        **verdict_figures(r, rows),
    }


def verdict_figures(report: dict[str, Any], rows) -> dict[str, Any]:
    """Counts by verdict (the report's), the job's state, and up to EXAMPLES_PER_CODE example rows
    of each verdict other than ok and error (error rows have their own table)."""
    examples: dict[str, list[dict[str, Any]]] = {}
    if rows.height and "verdict" in rows.columns:
        for row in rows.filter(~rows["verdict"].is_in(["ok", "error"])).iter_rows(named=True):
            found = examples.setdefault(row["verdict"], [])
            if len(found) < EXAMPLES_PER_CODE:
                found.append({"custom_id": row["custom_id"], "message": row.get("verdict_message") or "",
                              "content": row.get("content") or ""})
    state = job_state(report) if report.get("verdicts") else {"state": None}
    return {"verdicts": report.get("verdicts") or {}, "state": state["state"], "verdict_examples": examples}


def compare(now: dict[str, Any], before: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(figure, before, now, change) for the figures a nightly regression shows in."""
    out = []
    for key, label in (("requests", "requests"), ("failed", "error rows"), ("prompt_tokens", "prompt tokens"),
                       ("completion_tokens", "completion tokens"), ("estimated_cost", "estimated cost"),
                       ("requests_per_second", "requests/s"), ("generated_tokens_per_second", "generated tokens/s"),
                       ("cached_ratio", "prompt tokens from cache")):
        a, b = before.get(key), now.get(key)
        if key == "failed":
            a = (a / before["requests"]) if before.get("requests") else None
            b = (b / now["requests"]) if now.get("requests") else None
            label = "error rate"
        change = "" if not a or b is None else f"{(b - a) / a:+.1%}"
        out.append((label, _fmt(key, a), _fmt(key, b), change))
    return out


def terminal_summary(d: RunData, f: dict[str, Any], prev: dict[str, Any] | None = None) -> str:
    lines = [f"{d.display}: {f['requests']:,} requests, {f['succeeded']:,} ok, {f['failed']:,} failed"
             + (f" on {f['model']}" if f["model"] else "")]
    if f["trial"]:
        lines.append(trial_text(f["trial"]))
    if f["verdicts"]:
        lines.append(state_text(d.report))
    for verdict, exs in f["verdict_examples"].items():
        lines += [f"  {verdict}: {ex['custom_id']}: {_cut(ex['message'], 100)}" for ex in exs]
    for code, count in f["errors_by_code"].items():
        lines.append(f"  {code} ×{count:,}")
        for ex in f["examples"].get(code, []):
            lines.append(f"    {ex['custom_id']} ({ex['where']}): {_cut(ex['message'], 100)}")
    lines.append(f"tokens: {f['prompt_tokens']:,} prompt ({share(f['cached_ratio'])} from cache), "
                 f"{f['completion_tokens']:,} completion; estimated cost {usd(f['estimated_cost'])}"
                 + (f"; {f['images']:,} images" if f["images"] else ""))
    if f["reasoning_tokens"]:
        lines.append(thinking_text(f["reasoning_tokens"], f["completion_tokens"]))
    if f["wall_seconds"]:
        lines.append(f"last run: {duration(f['wall_seconds'])}, {rate(f['requests_per_second'])} requests/s, "
                     f"{rate(f['generated_tokens_per_second'])} generated tokens/s")
    if prev is not None:
        lines.append("compared with the previous run:")
        lines += [f"  {label}: {a} → {b} {change}" for label, a, b, change in compare(f, prev)]
    return "\n".join(lines)


def page(d: RunData, f: dict[str, Any], prev: dict[str, Any] | None = None) -> str:
    """The self-contained HTML report."""
    from plotly.offline import get_plotlyjs

    ok = d.rows.filter(d.rows["error"].is_null()) if d.rows.height else d.rows
    parts = _charts(d, f, ok)
    cards = "".join(f'<div class="card"><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>' for k, v in (
        ("requests", f"{f['requests']:,}"), *([("job state", f["state"])] if f["state"] else []),
        ("ok", f"{f['succeeded']:,}"), ("failed", f"{f['failed']:,}"),
        ("prompt tokens", f"{f['prompt_tokens']:,}"), ("completion tokens", f"{f['completion_tokens']:,}"),
        ("images", f"{f['images']:,}"),
        ("thinking tokens", f"{f['reasoning_tokens']:,}"),
        ("answer tokens", f"{f['completion_tokens'] - f['reasoning_tokens']:,}"),
        ("from cache", share(f["cached_ratio"])), ("estimated cost", usd(f["estimated_cost"])),
        ("wall time", duration(f["wall_seconds"])), ("requests/s", rate(f["requests_per_second"])),
        ("generated tok/s", rate(f["generated_tokens_per_second"]))))
    trial = f"<p><b>{html.escape(trial_text(f['trial']))}</b></p>" if f["trial"] else ""
    sections = [f"<h2>Summary</h2>{trial}<div class='cards'>{cards}</div>",
                f"<p>Model {html.escape(str(f['model']))}; price {html.escape(str(f['price']))}; "
                f"engines {f['engines']}</p>"]
    sections.append("<h2>Cost by price row</h2>" + _table(
        ["model", "price row", "prompt tokens", "completion tokens", "estimated cost"],
        [(f["model"], f["price"] or "none (no price known: pass --price-input/--price-output)",
          f"{f['prompt_tokens']:,}", f"{f['completion_tokens']:,}", usd(f["estimated_cost"]))]))
    if prev is not None:
        sections.append("<h2>Change from the previous run</h2>" + _table(
            ["figure", "previous", "this run", "change"], compare(f, prev)))
    if f["verdicts"]:
        sections.append("<h2>Rows by verdict, with examples</h2>" + _table(
            ["verdict", "rows", "custom_id", "why", "content"],
            [(v, n, ex["custom_id"], ex["message"], _cut(ex["content"], 200))
             for v, n in f["verdicts"].items()
             for ex in (f["verdict_examples"].get(v) or [{"custom_id": "", "message": "", "content": ""}])]))
    if f["examples"]:
        sections.append("<h2>Errors by code, with examples</h2>" + _table(
            ["code", "rows", "custom_id", "where", "message"],
            [(code, f["errors_by_code"].get(code), ex["custom_id"], ex["where"], ex["message"])
             for code, exs in f["examples"].items() for ex in exs]))
    sections.append("<h2>Charts</h2>" + "".join(parts))
    if ok.height:
        slowest = "engine_seconds" in ok.columns and ok["engine_seconds"].drop_nulls().len() > 0
        sort_key = "engine_seconds" if slowest else "completion_tokens"
        top = ok.sort(sort_key, descending=True, nulls_last=True).head(TOP)
        sections.append(f"<h2>{'Slowest' if slowest else 'Longest'} requests</h2>" + _table(
            ["custom_id", *(["time in the engine"] if slowest else []), "prompt tokens", "completion tokens", "finish"],
            [(r["custom_id"], *([duration(r[sort_key])] if slowest else []), r["prompt_tokens"],
              r["completion_tokens"], r["finish_reason"]) for r in top.iter_rows(named=True)]))
        sample = ok.sample(min(SAMPLE, ok.height), seed=0)
        sections.append("<h2>A sample of outputs</h2>" + _table(
            ["custom_id", "content"],
            [(r["custom_id"], _cut(r["content"] or "", 300)) for r in sample.iter_rows(named=True)]))
    title = f"Run report: {d.display}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script>{get_plotlyjs()}</script>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} .cards{{display:flex;flex-wrap:wrap;gap:.8em}}
.card{{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:8em}} .card b{{display:block;font-size:1.4em}}
.card span{{color:#666}} td,th{{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}}
table{{border-collapse:collapse;margin:.5em 0}} .chart{{display:inline-block;width:48%;min-width:420px}}</style></head>
<body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>"""


def _charts(d: RunData, f: dict[str, Any], ok) -> list[str]:
    """The report's charts, as HTML divs (plotly's script is included once by the page)."""
    import plotly.graph_objects as go

    charts: list[tuple[str, Any]] = []
    if ok.height:
        for column, title in (("prompt_tokens", "Prompt tokens per request"),
                              ("completion_tokens", "Completion tokens per request")):
            charts.append((title, go.Figure(go.Histogram(x=ok[column].to_list(), nbinsx=40))))
        reasons = ok["finish_reason"].fill_null("none").value_counts().sort("finish_reason")
        charts.append(("Finish reasons",
                       go.Figure(go.Bar(x=reasons["finish_reason"].to_list(), y=reasons["count"].to_list()))))
    if f["errors_by_code"]:
        codes = f["errors_by_code"]
        charts.append(("Error rows by code", go.Figure(go.Bar(x=list(codes), y=list(codes.values())))))
    timeline = _timeline(d)
    if timeline:
        x, y = timeline
        charts.append(("Rows finished over the run", go.Figure(go.Scatter(x=x, y=y, mode="lines"))))
    per = _per_engine(ok)
    if per is not None:
        names = [f"engine {e}" for e in per["engine"]]
        charts.append(("Requests per engine", go.Figure(go.Bar(x=names, y=per["rows"].to_list()))))
        charts.append(("Generated tokens/s per engine (first to last answer)",
                       go.Figure(go.Bar(x=names, y=per["tokens_per_second"].to_list()))))
    charts.append(("Prompt tokens served from cache", go.Figure(go.Pie(
        labels=["from cache", "computed"], values=[f["cached_tokens"], max(0, f["prompt_tokens"] - f["cached_tokens"])],
        hole=0.5))))
    parts = []
    for i, (title, fig) in enumerate(charts):
        fig.update_layout(title=title, height=320, margin={"l": 40, "r": 20, "t": 50, "b": 40})
        chart = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart{i}")
        parts.append(f'<div class="chart">{chart}</div>')
    return parts


def _per_engine(ok):
    """Rows and generated tokens/s of each engine, from the rows' engine and finish times."""
    import polars as pl

    if not ok.height or "engine" not in ok.columns or not ok["engine"].drop_nulls().len():
        return None
    per = ok.filter(pl.col("engine").is_not_null()).group_by("engine").agg(
        pl.len().alias("rows"), pl.col("completion_tokens").sum().alias("tokens"),
        ((pl.col("finished_at").max() - pl.col("finished_at").min()).dt.total_milliseconds() / 1000).alias("span"),
    ).sort("engine")
    rate = (pl.col("tokens") / pl.col("span").clip(lower_bound=1e-3)).round(1)
    return per.with_columns(rate.alias("tokens_per_second"))


def _timeline(d: RunData) -> tuple[list[str], list[int]] | None:
    rows = d.rows
    if rows.height and "finished_at" in rows.columns and rows["finished_at"].drop_nulls().len():
        times = rows["finished_at"].drop_nulls().sort()
        return [t.isoformat() for t in times.to_list()], list(range(1, times.len() + 1))
    stamps = [(r.get("at"), r["rows"]) for r in d.commits if r.get("at")]
    if not stamps:
        return None
    stamps.sort()
    total, x, y = 0, [], []
    for at, n in stamps:
        total += n
        x.append(at)
        y.append(total)
    return x, y


def _table(head: list[str], body: list[tuple]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>"
                   for r in body)
    return f"<table><tr>{h}</tr>{rows}</table>"


def _fmt(key: str, v: Any) -> str:
    """A compared figure as people read it: money, shares, rates, counts."""
    if v is None:
        return "–"
    if key == "estimated_cost":
        return usd(v)
    if key in ("failed", "cached_ratio"):  # `failed` is compared as the error rate
        return share(v)
    if key.endswith("per_second"):
        return rate(v)
    return f"{v:,}"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
