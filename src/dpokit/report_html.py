"""The HTML report of ``dpokit compare``: one self-contained file, readable on a phone.

No scripts, no fonts, no images, no links to anything outside the file: the CSS is inline and
every text is escaped, so the report opens anywhere (a laptop, a phone, a mail attachment) and
shows the same. The two answers to a prompt sit side by side on a wide screen and one above the
other on a narrow one; light and dark follow the reader's system setting.
"""

from __future__ import annotations

from html import escape
from typing import Any

CSS = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --card: #f6f8fa;
  --line: #d1d9e0; --win: #1a7f37; --loss: #cf222e; --tie: #818b98; }
@media (prefers-color-scheme: dark) { :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1;
  --card: #151b23; --line: #3d444d; --win: #3fb950; --loss: #f85149; --tie: #9198a1; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.35rem; margin: 0 0 4px; overflow-wrap: anywhere; }
.meta { color: var(--muted); font-size: .9rem; margin: 0; overflow-wrap: anywhere; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 12px; margin: 16px 0; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.stat .label { color: var(--muted); font-size: .85rem; }
.stat .value { font-size: 1.6rem; font-weight: 650; }
.stat .note { color: var(--muted); font-size: .85rem; }
.bar { display: flex; height: 10px; border-radius: 5px; overflow: hidden; background: var(--line); margin: 6px 0; }
.bar .win { background: var(--win); } .bar .tie { background: var(--tie); } .bar .loss { background: var(--loss); }
article { border-top: 1px solid var(--line); padding: 16px 0; }
.prompt { font-weight: 600; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-top: 10px; }
@media (max-width: 700px) { .pair { grid-template-columns: 1fr; } main { padding: 12px; } }
.answer { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 12px;
  min-width: 0; }
.answer.winner { border-color: var(--win); box-shadow: inset 4px 0 0 var(--win); }
.answer .head { display: flex; flex-wrap: wrap; justify-content: space-between; gap: 4px 10px;
  color: var(--muted); font-size: .85rem; }
.answer .who { font-weight: 600; color: var(--fg); overflow-wrap: anywhere; }
.answer .text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0 0; }
.verdict { margin: 8px 0 0; font-size: .9rem; }
.verdict.win { color: var(--win); } .verdict.loss { color: var(--loss); } .verdict.tie { color: var(--muted); }
footer { color: var(--muted); font-size: .8rem; border-top: 1px solid var(--line); padding-top: 12px; }
"""

VERDICTS = {"win": "policy wins", "loss": "reference wins", "tie": "tie"}


def count(n: int, word: str) -> str:
    """``1 answer``, ``2 answers``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def prompt_text(prompt: Any) -> str:
    """A prompt for display: the text, or a chat prompt's turns as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)


def sampling_text(result: dict[str, Any]) -> str:
    s = result["sampling"]
    how = "greedy" if s["greedy"] else f"temperature {s['temperature']:g}, top-p {s['top_p']:g}, top-k {s['top_k']}"
    return f"{how}, at most {s['max_new_tokens']} new tokens, seed {result['seed']}"


def _stat(label: str, value: str, note: str = "", extra: str = "") -> str:
    note_html = f'<div class="note">{escape(note)}</div>' if note else ""
    return (f'<div class="stat"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
            f"{extra}{note_html}</div>")


def _summary(result: dict[str, Any]) -> str:
    cards = []
    w = result.get("win_rate")
    if w is not None:
        lo, hi = w["ci95"]
        counts = {"win": w["wins"], "tie": w["ties"], "loss": w["losses"]}
        bar = "".join(f'<span class="{k}" style="width:{100 * c / w["n"]:.2f}%"></span>' for k, c in counts.items())
        cards.append(_stat(f"win rate of the policy (judge {result['judge']})", f"{w['win_rate']:.3f}",
                           f"95% CI {lo:.3f} to {hi:.3f}; {w['wins']} wins, {w['ties']} ties, {w['losses']} losses "
                           f"of {w['n']} (ties count half)", f'<div class="bar">{bar}</div>'))
        ms = w["mean_score"]
        cards.append(_stat("mean judge score", f"{ms['policy']:.4g} vs {ms['reference']:.4g}", "policy vs reference"))
    kl = result.get("kl")
    if kl is not None:
        cards.append(_stat("KL(policy || reference)", f"{kl['mean']:.4g} nats",
                           f"per answer, standard error {kl['stderr']:.2g}; {kl['samples']} samples of the policy "
                           f"({kl['from']})"))
    return f'<section class="summary">{"".join(cards)}</section>' if cards else ""


def _answer(who: str, name: str, answer: dict[str, Any], winner: bool) -> str:
    facts = [f"{answer['tokens']} tokens", f"{len(answer['text'])} characters"]
    if not answer["finished"]:
        facts.append("cut at the token limit")
    if answer.get("score") is not None:
        facts.append(f"score {answer['score']:.4g}")
    text = answer["text"] or "(empty answer)"
    return (f'<section class="answer{" winner" if winner else ""}" data-side="{who}">'
            f'<div class="head"><span class="who">{escape(who)}: {escape(name)}</span>'
            f"<span>{escape(' · '.join(facts))}</span></div>"
            f'<div class="text">{escape(text)}</div></section>')


def _item(i: int, item: dict[str, Any], result: dict[str, Any]) -> str:
    parts = [f'<article id="prompt-{i}"><p class="prompt">{i}. {escape(prompt_text(item["prompt"]))}</p>']
    for entry in item["answers"]:
        v = entry["verdict"]
        if result["num_samples"] > 1:
            parts.append(f'<p class="meta">answer {entry["sample"] + 1} of {result["num_samples"]}</p>')
        parts.append('<div class="pair">'
                     + _answer("policy", result["model"], entry["policy"], v == "win")
                     + _answer("reference", result["ref"], entry["reference"], v == "loss") + "</div>")
        if v is not None:
            parts.append(f'<p class="verdict {v}">{escape(VERDICTS[v])}</p>')
    return "".join(parts) + "</article>"


def render(result: dict[str, Any]) -> str:
    """The report of a `compare.compare` result as one HTML document."""
    from dpokit import __version__

    title = f"{result['model']} vs {result['ref']}"
    judge = f"; judge {result['judge']}" if result.get("judge") else ""
    meta = (f"{len(result['items'])} prompts from {result['prompts']}, {count(result['num_samples'], 'answer')} each; "
            f"{sampling_text(result)}{judge}")
    body = "".join(_item(i, item, result) for i, item in enumerate(result["items"], start=1))
    return ("<!doctype html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape('dpokit compare: ' + title)}</title><style>{CSS}</style></head>\n"
            f"<body><main><header><h1>{escape(title)}</h1><p class=\"meta\">{escape(meta)}</p></header>"
            f"{_summary(result)}{body}"
            f"<footer>made by dpokit {escape(__version__)} compare; answer j of a prompt is drawn with the same "
            "seed by both models</footer></main></body></html>\n")
