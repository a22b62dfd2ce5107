"""``dpokit data label``: driven through a pipe and through a real terminal (tmux), interrupted and
resumed without asking twice; ``--judge`` labelling end to end, and the pairs it writes train."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from dpokit.cli import main
from dpokit.label import decided, prompt_key, repair_tail, skipped_path

PROMPTS = ["What is gravity?", "Explain a budget.", "Describe the moon.", "What is sleep?"]
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _label_command(prompts, out) -> list[str]:
    return [sys.executable, "-m", "dpokit", "data", "label", "--model", "tiny", "--prompts", str(prompts),
            "--output", str(out), "--max-new-tokens", "20", "--seed", "1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def _pipe(command: list[str], text: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, input=text, capture_output=True, text=True, env=_env(), timeout=300)


def _shown(stdout: str) -> list[tuple[str, str, str]]:
    """(prompt, answer A, answer B) of every question a session asked."""
    pattern = r"\] Prompt:\n  (.*?)\n\nA \(.*?\):\n  (.*?)\n\nB \(.*?\):\n  (.*?)\n\nBetter answer\?"
    return re.findall(pattern, stdout, flags=re.S)


class Tmux:
    """A private tmux server running one command in a real terminal."""

    def __init__(self, command: list[str], socket) -> None:
        self.socket = str(socket)  # its own server socket (removed with the test's directory)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _env().items()
                       if k in ("PYTHONPATH", "DPOKIT_CACHE", "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "PATH",
                                "TOKENIZERS_PARALLELISM"))
        shell = f"env {env} {shlex.join(command)}; echo EXIT:$?; sleep 120"
        self.tmux("new-session", "-d", "-s", "label", "-x", "200", "-y", "50", shell)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "label", "-S", "-1000")

    def wait_for(self, text: str, count: int = 1, timeout: float = 240) -> str:
        end = time.time() + timeout
        while time.time() < end:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.5)
        raise AssertionError(f"{text!r} x{count} never appeared; the terminal shows:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_labelling_through_a_pipe_and_a_terminal_resumes_without_asking_twice(tiny_dir, tmp_path, monkeypatch,
                                                                               capsys):
    if shutil.which("tmux") is None:
        pytest.skip("no tmux on this machine; the terminal session cannot be driven")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    command = _label_command(prompts, out)

    # 1. a pipe: A is better, a tie, then quit
    first = _pipe(command, "a\nt\nq\n")
    assert first.returncode == 0, first.stderr[-2000:]
    asked = _shown(first.stdout)
    assert [q[0] for q in asked] == PROMPTS[:3]
    assert "stopped: 1 pair and 1 ties / skips saved; 2 prompts left" in first.stdout
    (pair,) = _rows(out)
    assert pair["prompt"] == PROMPTS[0] and pair["labeller"] == "human"
    assert (pair["chosen"].strip(), pair["rejected"].strip()) == asked[0][1:]
    (tie,) = _rows(skipped_path(out))
    assert tie["prompt"] == PROMPTS[1] and tie["verdict"] == "tie" and tie["answers"] == list(asked[1][1:])

    # 2. a real terminal: resumes at the third prompt; B is better; then Ctrl-C at the fourth
    session = Tmux(command, tmp_path / "tmux.sock")
    try:
        screen = session.wait_for("Better answer?")
        assert "2 already labelled, 2 to go" in screen and "every pick is saved at once" in screen  # a tty
        assert "[3/4] Prompt:" in screen and "[1/4]" not in screen
        session.tmux("send-keys", "-t", "label", "b", "Enter")
        session.wait_for("Better answer?", count=2)
        session.tmux("send-keys", "-t", "label", "C-c")
        screen = session.wait_for("EXIT:")
        assert "EXIT:130" in screen and "interrupted: 1 pair and 0 ties / skips saved; 1 prompt left" in screen
    finally:
        session.close()
    assert [r["prompt"] for r in _rows(out)] == [PROMPTS[0], PROMPTS[2]]

    # 3. input from a stream again (in this process): only the fourth prompt is asked
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n"))
    capsys.readouterr()
    assert main(command[3:]) == 0
    last = capsys.readouterr().out
    assert [q[0] for q in _shown(last)] == [PROMPTS[3]]
    assert "labelled all 4 prompts" in last
    assert [r["prompt"] for r in _rows(out)] == [PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    assert len(_rows(skipped_path(out))) == 1
    assert main(["data", "validate", "--data", str(out)]) == 0  # rows `dpokit train` reads


@pytest.fixture(scope="module")
def chat_model(tiny_dir, tmp_path_factory):
    """The tiny model with a chat template on its tokenizer."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat-tiny")
    for name in os.listdir(tiny_dir):
        shutil.copy(tiny_dir / name, path / name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def test_a_judge_labels_on_policy_pairs_that_train(chat_model, tmp_path, capsys):
    """--judge (the longer answer wins) turns a prompt list into pairs with no person; under a chat
    template they are chat rows whose prompt tokenizes to the ids the answers were generated from; and
    `dpokit train` trains on them."""
    from transformers import AutoTokenizer

    from dpokit.data.jsonl import read_preference_jsonl
    from dpokit.data.tokenize import encode_pair, prompt_ids

    (tmp_path / "rules.py").write_text("def longer(prompt, answer):\n    return len(answer)\n", encoding="utf-8")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2), encoding="utf-8")
    out = tmp_path / "judged.jsonl"
    argv = ["data", "label", "--model", str(chat_model), "--prompts", str(prompts), "--output", str(out),
            "--judge", f"{tmp_path / 'rules.py'}:longer", "--max-new-tokens", "24", "--batch-size", "3"]
    assert main(argv) == 0
    rows, skipped = _rows(out), _rows(skipped_path(out))
    assert len(rows) + len(skipped) == 8 and len(rows) >= 6
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    for row, pair in zip(rows, read_preference_jsonl(out)):
        assert row["labeller"].endswith("rules.py:longer")
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert len(chosen) > len(rejected) and row["scores"] == [len(chosen), len(rejected)]
        assert encode_pair(pair, tokenizer)[0] == prompt_ids(tokenizer, row["prompt"][0]["content"])
    capsys.readouterr()
    assert main(argv) == 0  # everything decided: nothing is generated again
    assert "8 already labelled, 0 to go" in capsys.readouterr().out and len(_rows(out)) == len(rows)
    assert main(["train", "--data", str(out), "--model", str(chat_model), "--steps", "2", "--batch-size", "2",
                 "--precision", "fp32", "--progress", "false", "--max-length", "128",
                 "--output", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_one_model_needs_sampling_for_two_answers(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n", encoding="utf-8")
    assert main(["data", "label", "--model", "tiny", "--prompts", str(prompts), "--output",
                 str(tmp_path / "o.jsonl"), "--greedy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: two answers from one model need sampling") and "fix:" in err


def test_resume_bookkeeping(tmp_path):
    out = tmp_path / "pairs.jsonl"
    assert skipped_path(out).name == "pairs.skipped.jsonl"
    out.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n'
                   '{"prompt": [{"role": "user", "content": "a"}], "chosen": [], "rejected": []}\n'
                   '{"prompt": "b", "cho', encoding="utf-8")  # a crash mid-line
    assert repair_tail(out) and not repair_tail(out)
    assert out.read_text().endswith("}\n")
    assert decided(out) == {"a": 2}
    assert prompt_key([{"role": "user", "content": "a"}]) == "a"
    assert prompt_key([{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]).startswith("[")


def test_two_models_answer_one_each_and_greedy_is_allowed(tiny_dir, llama_dir, tmp_path):
    """--model-b: one answer from each model (greedy is fine: the models differ); each pair holds
    exactly the two models' answers to its prompt, the judge's pick as chosen."""
    import torch

    from dpokit.generate import SamplingConfig, complete, load_lm

    (tmp_path / "rules.py").write_text("def longer(prompt, answer):\n    return len(answer)\n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "label", "--model", str(tiny_dir), "--model-b", str(llama_dir), "--prompts", str(prompts),
                 "--output", str(out), "--greedy", "--max-new-tokens", "12", "--precision", "fp32", "--judge",
                 f"{tmp_path / 'rules.py'}:longer"]) == 0
    sampling = SamplingConfig(max_new_tokens=12, greedy=True)
    answers = [[c.text.strip() for c in complete(*load_lm(str(path), torch.device("cpu")), PROMPTS, sampling)]
               for path in (tiny_dir, llama_dir)]
    rows, skipped = _rows(out), _rows(skipped_path(out))
    assert len(rows) + len(skipped) == len(PROMPTS) and rows
    for row in rows:
        i = PROMPTS.index(row["prompt"])
        assert {row["chosen"].strip(), row["rejected"].strip()} == {answers[0][i], answers[1][i]}
        assert len(row["chosen"]) > len(row["rejected"])
