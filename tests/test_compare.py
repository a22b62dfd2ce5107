"""``dpokit compare``: the KL estimate (0 against itself, growing with training), the win rate of a toy
judge rising after DPO, and the reports: Markdown, and HTML rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from dpokit.cli import main
from dpokit.compare import kl_samples, mean_and_stderr, side_by_side, to_markdown
from dpokit.generate import SamplingConfig, complete, load_lm
from dpokit.report_html import render

JUDGE = "import re\n\ndef gives_example(prompt, answer):\n    return bool(re.search(r'\\bexample\\b', answer))\n"


def _prompts(n: int, seed: int) -> list[str]:
    from dpokit.data.samples import sample_pairs

    return [row["prompt"] for row in sample_pairs(n, seed=seed)]


def test_kl_is_zero_against_itself_and_grows_with_training(aligned_run, one_thread):
    """KL(policy || reference) from the policy's own samples: exactly 0 for the start model against itself,
    then above 0 at step 5, and above that at step 20 by more than two standard errors of the difference
    (48 samples each)."""
    cpu = torch.device("cpu")
    reference, tokenizer = load_lm("tiny", cpu)
    pure = SamplingConfig(max_new_tokens=48, temperature=1.0, top_p=1.0, top_k=0)
    prompts = _prompts(12, seed=7)
    estimates = {}
    for name in ("tiny", "checkpoint-5", "final"):
        policy = reference if name == "tiny" else load_lm(str(aligned_run / "run" / name), cpu)[0]
        samples = [c for index in range(4) for c in complete(policy, tokenizer, prompts, pure, 12, 0, index)]
        estimates[name] = mean_and_stderr(kl_samples(policy, reference, samples, tokenizer.pad_token_id))
    assert estimates["tiny"] == (0.0, 0.0)
    (early, early_se), (late, late_se) = estimates["checkpoint-5"], estimates["final"]
    assert 0 < early and late - early > 2 * (early_se**2 + late_se**2) ** 0.5, estimates


@pytest.fixture(scope="module")
def compared(aligned_run, tmp_path_factory):
    """``dpokit compare`` with the toy judge, before DPO (the start model against itself) and after."""
    root = tmp_path_factory.mktemp("compare")
    (root / "toy_judge.py").write_text(JUDGE, encoding="utf-8")
    (root / "prompts.txt").write_text("\n".join(_prompts(12, seed=7)) + "\n", encoding="utf-8")
    results = {}
    for name, model, kl in (("before", "tiny", "1"), ("after", str(aligned_run / "run" / "final"), "0")):
        out = root / name
        assert main(["compare", "--model", model, "--ref", "tiny", "--prompts", str(root / "prompts.txt"),
                     "--greedy", "--max-new-tokens", "80", "--judge", f"{root / 'toy_judge.py'}:gives_example",
                     "--kl-samples", kl, "--output", str(out.with_suffix(".json")),
                     "--markdown", str(out.with_suffix(".md")), "--report", str(out.with_suffix(".html"))]) == 0
        results[name] = json.loads(out.with_suffix(".json").read_text())
    return root, results


def test_win_rate_of_a_toy_judge_rises_after_dpo(compared):
    """The judge prefers answers that give an example, as the chosen answers of the training pairs do:
    all ties before training (the same model, greedy), a clear win after."""
    _, results = compared
    before, after = results["before"]["win_rate"], results["after"]["win_rate"]
    assert (before["wins"], before["ties"], before["losses"]) == (0, 12, 0) and before["win_rate"] == 0.5
    assert results["before"]["kl"]["mean"] == 0.0
    assert after["win_rate"] >= 0.8 and after["ci95"][0] > 0.5, after
    assert after["mean_score"]["policy"] > after["mean_score"]["reference"]
    assert results["after"]["kl"] is None  # --kl-samples 0


def test_markdown_report_has_every_prompt_and_both_answers(compared):
    root, results = compared
    text = (root / "after.md").read_text(encoding="utf-8")
    assert text.startswith("# ") and "win rate of" in text
    for item in results["after"]["items"]:
        entry = item["answers"][0]
        assert item["prompt"] in text
        for side in ("policy", "reference"):
            assert entry[side]["text"].replace("|", "\\|").replace("\n", "<br>") in text
            assert f"({entry[side]['tokens']} tokens)" in text
    assert text.count("*verdict: ") == 12


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium); the HTML is not rendered")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def test_html_report_is_self_contained_and_renders_both_answers(compared, tmp_path):
    root, results = compared
    html = (root / "after.html").read_text(encoding="utf-8")
    assert not re.search(r"(?i)<script|<link|<img|<iframe|url\(|https?://|@import", html)
    assert 'name="viewport"' in html
    dom = _chromium(["--dump-dom", (root / "after.html").as_uri()], tmp_path).stdout
    parser = _Text()
    parser.feed(dom)
    shown = " ".join(" ".join(parser.parts).split())
    for item in results["after"]["items"]:
        entry = item["answers"][0]
        for side in ("policy", "reference"):
            assert " ".join(entry[side]["text"].split()) in shown
    assert shown.count("policy wins") == sum(e["verdict"] == "win" for i in results["after"]["items"]
                                             for e in i["answers"])
    shot = tmp_path / "phone.png"
    _chromium([f"--screenshot={shot}", "--window-size=390,1600", "--hide-scrollbars", (root / "after.html").as_uri()],
              tmp_path)
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (390, 1600)  # the phone-width page was drawn
    assert shot.stat().st_size > 20_000


def _result(policy_text: str, reference_text: str) -> dict:
    answer = lambda text, score: {"text": text, "tokens": len(text.split()), "finished": True,  # noqa: E731
                                  "score": score}
    return {"model": "out/final", "ref": "sft", "prompts": "p.txt", "seed": 0, "num_samples": 1,
            "sampling": {"max_new_tokens": 9, "greedy": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50},
            "judge": "rules.py:f", "kl": {"mean": 1.5, "stderr": 0.25, "samples": 2, "per_prompt": 1, "from": "x",
                                          "values": [1.25, 1.75]},
            "win_rate": {"win_rate": 1.0, "ci95": [0.2065, 1.0], "wins": 1, "ties": 0, "losses": 0, "n": 1,
                         "mean_score": {"policy": 1.0, "reference": 0.0}},
            "items": [{"prompt": "Why <b>?", "answers": [{"sample": 0, "policy": answer(policy_text, 1.0),
                                                           "reference": answer(reference_text, 0.0),
                                                           "verdict": "win"}]}]}


def test_side_by_side_fits_the_width_and_shows_both():
    long = "word " * 40 + "end-of-policy"
    result = _result(long.strip(), "short reference answer")
    text = side_by_side(result, width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "end-of-policy" in text and "short reference answer" in text
    assert "verdict: policy wins (score 1 vs 0)" in text and "KL(policy || reference): 1.5 nats" in text


def test_reports_escape_what_the_models_wrote():
    result = _result("<script>alert(1)</script> a | b", "line one\nline two")
    page = render(result)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Why &lt;b&gt;?" in page
    md = to_markdown(result)
    assert "a \\| b" in md and "line one<br>line two" in md


def test_html_report_fits_a_phone_screen_without_sideways_scrolling(tmp_path):
    """At a phone's width (390 CSS px) nothing in the page reaches past the screen's edge, even an
    unbroken 200-character answer, a long model path and a long prompt. Measured by Chromium's layout:
    under `--dump-dom` the headless window is at least 500 px wide (narrow enough for the one-column
    layout), so a copy of the report is held to 390 px and gets a script (the report itself has none) that writes the
    right-most edge of any element into the DOM, which `--dump-dom` returns."""
    result = _result("x" * 200, "short reference answer " * 30)
    result["model"] = "/very/long/path/to/a/run/" + "checkpoints/" * 12 + "final"
    result["items"][0]["prompt"] = "Why " + "does-this-wrap-" * 20 + "?"
    probe = ("<script>let right = 0; for (const e of document.querySelectorAll('body *')) "
             "right = Math.max(right, e.getBoundingClientRect().right); "
             "document.body.setAttribute('data-right', Math.ceil(right));</script>")
    html = render(result).replace("</head>", "<style>html { width: 390px; }</style></head>")
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = _chromium(["--window-size=500,844", "--dump-dom", page.as_uri()], tmp_path).stdout
    found = re.search(r'data-right="(\d+)"', dom)
    assert found, dom[-2000:]
    assert 300 < int(found.group(1)) <= 390


def test_sampled_answers_share_each_prompts_seeds_between_the_models(tmp_path, tiny_dir, capsys):
    """Sampled, two answers per prompt: the policy's and the reference's k-th answers to a prompt are
    drawn with the same seed, so a model compared with itself writes the same answers on both sides
    (every verdict a tie, the win rate 0.5, the KL 0), while its two samples of a prompt differ."""
    (tmp_path / "judge.py").write_text("def length(prompt, answer):\n    return len(answer)\n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is rain?\nName a colour.\nWhy do we sleep?\n", encoding="utf-8")
    out = tmp_path / "result.json"
    assert main(["compare", "--model", str(tiny_dir), "--ref", "tiny", "--prompts", str(prompts), "--num-samples",
                 "2", "--temperature", "1.0", "--max-new-tokens", "16", "--judge", f"{tmp_path / 'judge.py'}:length",
                 "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    items = result["items"]
    assert len(items) == 3 and all(len(item["answers"]) == 2 for item in items)
    for item in items:
        for entry in item["answers"]:
            assert entry["policy"]["text"] == entry["reference"]["text"] and entry["verdict"] == "tie"
    assert any(item["answers"][0]["policy"]["text"] != item["answers"][1]["policy"]["text"] for item in items)
    assert result["win_rate"]["ties"] == 6 and result["win_rate"]["win_rate"] == 0.5
    assert result["kl"]["mean"] == pytest.approx(0.0, abs=1e-6)
