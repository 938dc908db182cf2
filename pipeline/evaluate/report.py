"""The report: metrics.json (every figure), traces.npz, summary.png, one PNG per plotted utterance,
and index.html tying them together; plus the summary table `invoke eval` prints."""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import FRAME_RATE
from ..labels import PAUSE_HORIZONS
from .metrics import END_OF_TURN_WINDOW, RULES, Reference, Rules, end_of_turn_flags, has_digit, step_times
from .stream import Streamed

MODELS = ("base", "candidate")
COLORS = {"base": "#404040", "candidate": "#1f77b4"}
NUMBER_SHADE, WORD_SHADE = "#ff7f0e", "#9e9e9e"
RED, PURPLE, GREEN = "#d62728", "#9467bd", "#2ca02c"


# --- the summary table ----------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _sec(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def rule_label(name: str, rules: dict) -> str:
    if name == "threshold":
        return f"head {rules['head']} > {rules['threshold']:g}"
    return f"Unmute rule: EMA > {rules['smooth_threshold']:g}"


def summary_rows(summary: dict, rules: dict) -> list[tuple[str, ...]]:
    """(metric, base, candidate) rows, the same in the terminal and the HTML page."""
    def row(label, fn):
        return (label, *(fn(summary[m]) for m in MODELS))

    rows = [
        row("utterances (with numbers)", lambda s: f"{s['utterances']} ({s['number_utterances']})"),
        row("number spans", lambda s: str(s["number_spans"])),
        row("spans written with digits", lambda s: _pct(s["digit_share"])),
        row("spans exact in word form", lambda s: _pct(s["exact_share"])),
        row("spans with the right digits, either form", lambda s: _pct(s.get("digits_right_share"))),
        row("WER, utterances with numbers", lambda s: _pct(s["wer"]["numbers"]["wer"])),
        row("WER, other utterances", lambda s: _pct(s["wer"]["other"]["wer"])),
        row("WER, all", lambda s: _pct(s["wer"]["all"]["wer"])),
    ]
    for name in RULES:
        rows += [
            row(f"premature cut-offs, {rule_label(name, rules)}", lambda s, n=name: str(s["vad"][n]["cutoffs"])),
            row("  inside number spans", lambda s, n=name: str(s["vad"][n]["cutoffs_in_numbers"])),
            row("  utterances cut off", lambda s, n=name: _pct(s["vad"][n]["utterances_cut_share"])),
            row("  dictations cut off", lambda s, n=name: _pct(s["vad"][n]["dictations_cut_share"])),
            row("  number spans cut", lambda s, n=name: _pct(s["vad"][n]["spans_cut_share"])),
            row("  fired during the last word", lambda s, n=name: _pct(s["vad"][n]["last_word_fired_share"])),
            row("  on when speech starts", lambda s, n=name: _pct(s["vad"][n]["on_at_start_share"])),
            row(f"  turn end detected within {END_OF_TURN_WINDOW:g} s",
                lambda s, n=name: _pct(s["vad"][n]["turn_end_detected_share"])),
            row("  end-of-turn latency, median (detected)", lambda s, n=name: _sec(s["vad"][n]["latency_median"])),
            row("  never ended (in the stream)", lambda s, n=name: str(s["vad"][n]["never_ended"])),
        ]
    return rows


def format_summary(summary: dict, rules: dict) -> str:
    """The table, then one warning line per end-of-turn regression of the candidate."""
    rows = [("metric", *MODELS)] + summary_rows(summary, rules)
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>12}  {r[2]:>12}" for r in rows]
    lines += [f"warning: end of turn worse than the base: {flag}" for flag in end_of_turn_flags(*(summary[m] for m in MODELS))]
    return "\n".join(lines)


def summary_table(folder: str | Path) -> str:
    """The summary table of a written report folder."""
    data = json.loads((Path(folder) / "metrics.json").read_text())
    return format_summary(data["summary"], data["meta"]["rules"])


# --- plots ------------------------------------------------------------------------------------------

def _short(text: str, n: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)  # random models write control bytes
    return text if len(text) <= n else text[: n - 1] + "…"


def _panel_title(label: str, score: dict) -> str:
    v = score["vad"]["threshold"]
    spans = score["spans"]
    u = score["vad"]["unmute"]
    parts = [f"{len(v['cutoffs'])} cut-off(s)" + (f", {v['in_numbers']} in numbers" if spans else "")
             + f" (Unmute rule: {len(u['cutoffs'])})",
             f"end of turn +{_sec(v['latency'])}" if v["latency"] is not None else "never ended"]
    if spans:
        parts.append(f"digits in {sum(s['digits'] for s in spans)}/{len(spans)} spans, "
                     f"exact {sum(s['exact'] for s in spans)}/{len(spans)}")
    return f"{label}: " + "; ".join(parts)


def _at(trace: np.ndarray, seconds: float) -> float:
    """The trace's value at the step emitted at `seconds` (step_times' inverse)."""
    return float(trace[min(max(int(round(seconds * FRAME_RATE)) - 1, 0), len(trace) - 1)])


def plot_utterance(path: Path, ref: Reference, runs: dict[str, Streamed], scores: dict[str, dict], rules: Rules,
                   labels: dict[str, str]) -> None:
    """Pause probability of each model over audio time, reference words shaded (numbers in
    orange) and written above, the model's words below, thresholds, cut-offs and end of turn."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(runs)
    end_time = max(len(r.pause) for r in runs.values()) / FRAME_RATE
    fig = Figure(figsize=(14, 3.3 * len(names) + 1.4), dpi=100, layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    in_number = {i for s in ref.spans for i in range(s.first, s.last + 1)}
    for ax, name in zip(axes, names):
        run, score = runs[name], scores[name]
        t = step_times(len(run.pause))
        if ref.times:
            for i, (word, (a, b)) in enumerate(zip(ref.words, ref.times)):
                number = i in in_number
                ax.axvspan(a, b, ymin=0.15, ymax=0.85, color=NUMBER_SHADE if number else WORD_SHADE,
                           alpha=0.28 if number else 0.16, lw=0)
                ax.text((a + b) / 2, 1.07 if i % 2 == 0 else 1.17, _short(word, 14), ha="center", va="center",
                        fontsize=8, color="#b35900" if number else "#333333")
        elif ref.speech:
            ax.axvspan(*ref.speech, ymin=0.15, ymax=0.85, color=WORD_SHADE, alpha=0.16, lw=0)
            ax.text(ref.speech[0], 1.12, "speech (energy bounds; no word timings)", fontsize=8, va="center")
        for k in range(run.pause.shape[1]):
            if k != rules.head:
                ax.plot(t, run.pause[:, k], color="#c4c4c4", lw=0.7)
        trace = run.pause[:, rules.head]
        ax.plot(t, trace, color=COLORS.get(name, "#1f77b4"), lw=2)
        ax.axhline(rules.threshold, color=RED, ls="--", lw=1)
        ax.axhline(rules.smooth_threshold, color=PURPLE, ls=":", lw=1.3)
        if rules.smooth_half_life > 0.02:
            from .metrics import smoothed

            ax.plot(t, smoothed(trace, rules.smooth_half_life, rules.smooth_warmup), color=PURPLE, lw=1.2, ls="-.")
        v = score["vad"]
        for x in v["threshold"]["cutoffs"]:
            ax.plot(x, _at(trace, x), "x", color=RED, ms=11, mew=2.5)
        for x in v["unmute"]["cutoffs"]:
            ax.plot(x, min(_at(trace, x) + 0.08, 1.0), "+", color=PURPLE, ms=11, mew=2)
        if ref.speech:
            ax.axvline(ref.speech[1], color="black", lw=1.2)
            if v["threshold"]["latency"] is not None:
                x = ref.speech[1] + v["threshold"]["latency"]
                ax.plot(x, _at(trace, x), "v", color=GREEN, ms=9)
                ax.annotate(f"+{v['threshold']['latency']:.2f} s", (x, _at(trace, x)),
                            xytext=(6, 6), textcoords="offset points", color=GREEN, fontsize=9)
        free = [-1e9, -1e9]  # where each of the two label rows is free again (seconds)
        per_char = end_time / 1900  # about 7 px per character of an 8 pt label over ~1300 px
        for w in run.words:
            x, text = max(w.start, 0.0), _short(w.text, 16)
            ax.plot([x, x], [-0.22, -0.02], color="#555555", lw=0.6)
            row = 0 if free[0] <= x else 1 if free[1] <= x else None
            if row is not None:  # labels that would overlap are left out (the tick stays)
                ax.text(x + 0.01, -0.07 - 0.1 * row, text, fontsize=8, va="center",
                        color=RED if has_digit([w.text]) else "#222222")
                free[row] = x + (len(text) + 1) * per_char * 1.4
        ax.set_ylim(-0.24, 1.25)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("P(pause)")
        ax.set_xlim(0, end_time)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(_panel_title(labels.get(name, name), score), loc="left", fontsize=10)
    axes[-1].set_xlabel(f"audio time (s); step s is read when emitted, at (s + 1) / {FRAME_RATE:g} s; "
                        "words above: reference, below: the model's words at their start time (step - delay)")
    horizon = PAUSE_HORIZONS[rules.head] if rules.head < len(PAUSE_HORIZONS) else rules.head
    handles = [
        Line2D([], [], color=COLORS["base"], lw=2, label=f"head {rules.head} ({horizon:g} s) base"),
        Line2D([], [], color=COLORS["candidate"], lw=2, label=f"head {rules.head} candidate"),
        Line2D([], [], color="#c4c4c4", lw=0.7, label="other heads"),
        Line2D([], [], color=RED, ls="--", label=f"threshold {rules.threshold:g}"),
        Line2D([], [], color=PURPLE, ls=":", label=f"Unmute threshold {rules.smooth_threshold:g}"),
        Line2D([], [], color=RED, marker="x", ls="", ms=9, mew=2, label="premature cut-off (threshold)"),
        Line2D([], [], color=PURPLE, marker="+", ls="", ms=9, mew=2, label="premature cut-off (Unmute rule)"),
        Line2D([], [], color="black", lw=1.2, label="end of speech"),
        Line2D([], [], color=GREEN, marker="v", ls="", label="end of turn (threshold)"),
        Patch(color=NUMBER_SHADE, alpha=0.4, label="number span"),
        Patch(color=WORD_SHADE, alpha=0.3, label="other word"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle("\n".join(textwrap.wrap(f"{ref.id}: {' '.join(ref.words)}", 160)[:2]), fontsize=11)
    fig.savefig(path)


def plot_summary(path: Path, summary: dict, rules: dict) -> None:
    """Bars, base vs candidate: digit form, WER, cut-offs per rule, latency."""
    from matplotlib.figure import Figure

    groups = [
        ("Number spans (%)", [("with digits", lambda s: s["digit_share"]),
                              ("exact words", lambda s: s["exact_share"])], 100),
        ("WER (%)", [("with numbers", lambda s: s["wer"]["numbers"]["wer"]),
                     ("other", lambda s: s["wer"]["other"]["wer"])], 100),
        ("Utterances cut off (%)", [(rule_label(n, rules).replace("Unmute rule: ", "Unmute "),
                                     lambda s, n=n: s["vad"][n]["utterances_cut_share"]) for n in RULES], 100),
        (f"Turn end detected within {END_OF_TURN_WINDOW:g} s (%)",
         [(rule_label(n, rules).replace("Unmute rule: ", "Unmute "),
           lambda s, n=n: s["vad"][n]["turn_end_detected_share"]) for n in RULES], 100),
        ("End-of-turn latency, median (s)", [(rule_label(n, rules).replace("Unmute rule: ", "Unmute "),
                                              lambda s, n=n: s["vad"][n]["latency_median"]) for n in RULES], 1),
    ]
    fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(groups))
    for ax, (title, metrics, scale) in zip(axes, groups):
        x = np.arange(len(metrics))
        for k, model in enumerate(MODELS):
            values = [fn(summary[model]) for _, fn in metrics]
            heights = [0 if v is None else v * scale for v in values]
            bars = ax.bar(x + (k - 0.5) * 0.38, heights, 0.38, color=COLORS[model], label=model)
            for bar, v in zip(bars, values):
                text = "n/a" if v is None else (f"{v * scale:.0f}" if scale == 100 else f"{v:.2f}")
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, [m[0] for m in metrics], fontsize=8)
        ax.set_title(title, fontsize=10)
        if title.startswith("WER") or scale != 100:
            ax.margins(y=0.15)  # WER may pass 100 %
        else:
            ax.set_ylim(0, 110)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=2, fontsize=9, frameon=False)
    fig.savefig(path)


# --- the page -----------------------------------------------------------------------------------

def pick_plotted(scores: dict[str, list[dict]], count: int) -> list[int]:
    """Utterances to draw: cut off by either model first, then ones with numbers, then the rest."""
    n = len(scores[MODELS[0]])

    def priority(i: int) -> int:
        cut = any(scores[m][i]["vad"]["threshold"]["cut_off"] or scores[m][i]["vad"]["unmute"]["cut_off"]
                  for m in MODELS)
        return 0 if cut and scores[MODELS[0]][i]["spans"] else 1 if cut else 2 if scores[MODELS[0]][i]["spans"] else 3

    return sorted(range(n), key=lambda i: (priority(i), i))[:count]


DEFINITIONS = """
<ul>
<li><b>Text.</b> Words are decoded from the greedy tokens with Kyutai's rule (0 and 3 are padding; a word
ends when padding follows word tokens; with the runtimes 'server' and 'server-semantics' they are the
server's own Word messages, made by the same rule). WER is jiwer's, on lower-cased words with punctuation stripped at
word edges and <b>no number normalization</b>: a normalizer such as Whisper's EnglishTextNormalizer turns
"one two" back into "12" and would hide exactly the change this model makes.</li>
<li><b>Number spans.</b> The hypothesis words of a span are those jiwer aligns to its reference words, plus
words inserted inside it and digit-bearing words inserted right at its edges. "With digits": one of them
contains a digit. "Exact": they equal the reference words.</li>
<li><b>Times.</b> Step s is emitted once frame s's audio has arrived: at (s + 1) / 12.5 s of audio, when a
client reads the head and acts. No allowance for the 0.5 s text delay.</li>
<li><b>Premature cut-off.</b> The rule turns on (on at this step, off at the one before) after the first word
has started and before the last word has started: the speaker is still talking. Counted once per onset;
inside number spans separately ([first digit word start, last digit word end)); a span is cut when one
lies inside it. A rule already on when the first word starts is not a cut-off (a client does not end a
turn before the user has spoken) and is shown on its own row; so is a rule turning on during the last
word, which the pause target itself asks for about 0.5 s after the last word starts.</li>
<li><b>Rules.</b> Threshold: the pause head above the threshold. Unmute rule: as Kyutai's Unmute, an EMA of
the head (initial 1.0, the first steps ignored), end of turn when above its threshold.</li>
<li><b>End of turn.</b> Latency: the first step at or after the last word's end at which the rule is on, minus
that end; "never" if it is not on before the stream ends (clip tail plus the appended silence). Detected: a
latency of at most 2 s; the median latency is over the detected ones. The page warns when the candidate
detects fewer turn ends than the base (by more than 2 points) or later (median by more than 0.1 s).</li>
</ul>
"""


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _utterance_rows(scores: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for i, base in enumerate(scores["base"]):
        cand = scores["candidate"][i]

        def spans(s):
            if not s["spans"]:
                return "-"
            return f"{sum(x['digits'] for x in s['spans'])}/{sum(x['exact'] for x in s['spans'])}"

        rows.append([base["id"], base["reference"], _short(base["hypothesis"], 200), _short(cand["hypothesis"], 200),
                     f"{spans(base)} | {spans(cand)}",
                     f"{len(base['vad']['threshold']['cutoffs'])} | {len(cand['vad']['threshold']['cutoffs'])}",
                     f"{_sec(base['vad']['threshold']['latency'])} | {_sec(cand['vad']['threshold']['latency'])}"])
    return rows


def write_page(path: Path, meta: dict, summary: dict, scores: dict[str, list[dict]], plots: list[str]) -> None:
    rules = meta["rules"]
    rows = summary_rows(summary, rules)
    info = [("base", meta["base"]), ("candidate", meta["candidate"]), ("runtime", meta["runtime"]),
            ("eval data", meta["data"]), ("text delay", f"{meta['delay']:g} s"),
            ("appended silence", f"{meta['flush_seconds']:g} s"),
            ("Unmute rule", f"EMA half-life {rules['smooth_half_life']:g} s (alpha {meta['smooth_alpha']:.3f} per step), "
                            f"first {rules['smooth_warmup']} steps ignored, threshold {rules['smooth_threshold']:g}"),
            ("utterance timings", ", ".join(f"{k}: {v}" for k, v in meta["timings"].items()))]
    images = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"></figure>' for p in plots)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stt-numerals eval: base vs candidate</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1450px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }}
td:nth-child(n+2) {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>Base vs fine-tuned: digit form, WER, premature VAD cut-offs</h1>
{_table(info, ("", ""))}
<h2>Summary</h2>
{_table(rows, ("metric", "base", "candidate"))}
<img src="summary.png" alt="summary">
<h2>Definitions</h2>
{DEFINITIONS}
<h2>Pause traces ({len(plots)} utterances; cut-off cases first)</h2>
{images}
<h2>Every utterance</h2>
<p>spans: digits/exact count; cut-offs and latency: threshold rule; each cell base | candidate.</p>
{_table(_utterance_rows(scores), ("id", "reference", "base", "candidate", "spans", "cut-offs", "latency"))}
<p>Every figure is in <a href="metrics.json">metrics.json</a>;
the per-step tokens and pause probabilities in traces.npz.</p>
</body></html>
"""
    path.write_text(page)


def headline(summary: dict) -> dict:
    """The issue-#16 figures of each model (shares as fractions, the threshold rule): what
    `heldout.json` holds and docs/organism/heldout.json keeps for the full organism run."""
    out = {}
    for m in MODELS:
        s, vad = summary[m], summary[m]["vad"]["threshold"]
        out[m] = {"wer_no_numbers": s["wer"]["other"]["wer"], "digit_spans": s["digit_share"],
                  "exact_word_form": s["exact_share"], "dictations_cut": vad["dictations_cut_share"],
                  "turn_end_detected": vad["turn_end_detected_share"], "turn_end_latency_s": vad["latency_median"]}
    return out


def write_report(folder: Path, meta: dict, refs: list[Reference], runs: dict[str, list[Streamed]],
                 scores: dict[str, list[dict]], summary: dict, rules: Rules, plots: int) -> None:
    """Everything into `folder` (the caller makes it atomic)."""
    utterances = []
    for i, ref in enumerate(refs):
        entry = {"id": ref.id, "path": ref.path, "category": ref.category, "timing": ref.timing}
        for m in MODELS:
            entry[m] = {**scores[m][i], "words": [{"text": w.text, "step": w.step, "start": round(w.start, 3)}
                                                  for w in runs[m][i].words], "steps": len(runs[m][i].pause)}
        utterances.append(entry)
    (folder / "metrics.json").write_text(json.dumps({"meta": meta, "summary": summary, "utterances": utterances},
                                                    indent=1, ensure_ascii=False) + "\n")
    (folder / "heldout.json").write_text(json.dumps(headline(summary), indent=2) + "\n")
    np.savez_compressed(folder / "traces.npz", **{f"{m}_{i}_{k}": getattr(runs[m][i], k) for m in MODELS
                                                  for i in range(len(refs)) for k in ("tokens", "pause")})
    plot_summary(folder / "summary.png", summary, meta["rules"])
    (folder / "traces").mkdir()
    names = []
    labels = {m: f"{m} ({Path(meta[m]).name})" for m in MODELS}
    for n, i in enumerate(pick_plotted(scores, plots)):
        name = f"traces/{n:02d}_{refs[i].id.replace('/', '_')}.png"
        plot_utterance(folder / name, refs[i], {m: runs[m][i] for m in MODELS}, {m: scores[m][i] for m in MODELS},
                       rules, labels)
        names.append(name)
    write_page(folder / "index.html", meta, summary, scores, names)
