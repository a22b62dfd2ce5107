"""Data faults found by trying dpokit as a new user: each one a located `error:` with a `fix:`, or a
counted drop with the way to keep the pairs; never a traceback, never a silent wrong run."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.cli import main

NO_MODEL = "/nonexistent/model-dir"  # a run must stop on the data before it would try to load this
GOOD = {"prompt": "What is 2 + 2?", "chosen": "2 + 2 is 4.", "rejected": "5"}


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_lone_surrogate_is_located_in_validate_stats_and_train(tmp_path, capsys):
    """JSON allows "\\ud800" (a lone UTF-16 surrogate); no tokenizer can encode it. It is a row error
    naming file, line, column and character, in chat messages and JSON arrays too; a real pair
    ("\\ud83d\\ude00", one character) is fine."""
    path = write(tmp_path / "pairs.jsonl", [json.dumps(GOOD), '{"prompt": "Hi \\ud83d\\ude00", "chosen": "a", '
                                            '"rejected": "b"}', '{"prompt": "x", "chosen": "ok \\udc00", "rejected": "b"}'])
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert (f"{path}, line 3, column 'chosen': invalid Unicode: a lone UTF-16 surrogate (\\udc00) at character 31 "
            "of the line") in out and "fix: replace \\udc00" in out and "line 2" not in out

    assert main(["data", "stats", str(path)]) == 0  # bad rows are counted, not fatal, in stats
    captured = capsys.readouterr()
    assert "skipped (bad row): 1 row: invalid Unicode (line 3)" in captured.out and "2 pairs kept" in captured.out
    assert "Traceback" not in captured.err + captured.out

    assert main(["train", "--data", str(path), "--model", NO_MODEL, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}, line 3, column 'chosen': invalid Unicode") and "\n  fix: " in err
    assert "Traceback" not in err and NO_MODEL not in err and not (tmp_path / "out").exists()

    array = tmp_path / "pairs.json"
    array.write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a", "chosen": '
                     '[{"role": "assistant", "content": "\\ud800"}], "rejected": [{"role": "assistant", '
                     '"content": "d"}]}]', encoding="utf-8")
    assert main(["data", "validate", str(array)]) == 1
    assert f"{array}, line 2, column 'chosen': invalid Unicode" in capsys.readouterr().out


def test_every_unknown_role_of_a_row_is_reported_at_once(tmp_path, capsys):
    row = {"chosen": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}],
           "rejected": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "no"}]}
    path = write(tmp_path / "chat.jsonl", [row])
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert ('column \'chosen\': 4 messages have unknown roles: chosen[0] "human", chosen[1] "gpt", '
            'rejected[0] "human", rejected[1] "bot"') in out
    assert "rename 'human' to 'user', 'gpt' to 'assistant', 'bot' to 'assistant'" in out

    sft = write(tmp_path / "sft.jsonl", [{"messages": [{"role": "human", "content": "hi"},
                                                       {"role": "gpt", "content": "yo"},
                                                       {"role": "narrator", "content": "then"},
                                                       {"role": "assistant", "content": "ok"}]}])
    assert main(["sft", "--data", str(sft), "--model", NO_MODEL, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sft}, line 1, column 'messages': 3 messages have unknown roles: "
                          'messages[0] "human", messages[1] "gpt", messages[2] "narrator"')
    assert "fix: roles must be one of system, user, assistant, tool; rename 'human' to 'user', 'gpt' to " \
           "'assistant'" in err and "Traceback" not in err


def test_a_message_without_a_role_is_a_located_wrong_type(tmp_path, capsys):
    row = {"prompt": [{"content": "hi"}], "chosen": [{"role": "assistant", "content": "yes"}],
           "rejected": [{"role": "assistant", "content": "no"}]}
    assert main(["data", "validate", str(write(tmp_path / "chat.jsonl", [row]))]) == 1
    out = capsys.readouterr().out
    assert "wrong type" in out and "line 1" in out and "KeyError" not in out
    sft = write(tmp_path / "sft.jsonl", [{"messages": [{"content": "hi"}, {"role": "assistant", "content": "ok"}]}])
    assert main(["sft", "--data", str(sft), "--model", NO_MODEL, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sft}, line 1") and "KeyError" not in err and "Traceback" not in err


SHARED = " ".join(["the answer starts with a long part that both responses share word for word"] * 4)
CUT_PAIRS = [GOOD, {"prompt": "Say it.", "chosen": SHARED + " and ends well.", "rejected": SHARED + " and ends badly."},
             {"prompt": " ".join(["a prompt far longer than the whole sequence may be"] * 8), "chosen": "Yes.",
              "rejected": "No."},
             {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A dog."}]


def test_pairs_made_identical_by_truncation_are_dropped_and_reported(tmp_path, capsys):
    """The second pair parts only after max_length: cut, it has no preference. `data stats` and
    `train` count and drop it; the third (a prompt alone too long) comes with the flag that keeps it."""
    path = write(tmp_path / "pairs.jsonl", CUT_PAIRS)
    assert main(["data", "stats", str(path), "--max-length", "32"]) == 0
    out = capsys.readouterr().out
    assert ("max_length 32: 2 pairs would be dropped (1 chosen == rejected after truncation, "
            "1 prompt alone reaches max_length)") in out
    assert ("to keep the 1 pair dropped as their prompt alone reaches max_length 32: pass --max-prompt-length 16 "
            "(a longer prompt keeps its last 16 tokens, the answers get 16), or raise --max-length") in out
    assert "chosen == rejected: 0 rows; 1 more pair once truncated to max_length 32" in out

    assert main(["data", "validate", str(path), "--model", "tiny", "--max-length", "32"]) == 0
    out = capsys.readouterr().out
    assert "warning, dropped: 1 row: chosen == rejected after truncation (line 2)" in out
    assert "warning, dropped: 1 row: prompt alone reaches max_length (line 3)" in out

    out_dir = tmp_path / "run"
    assert main(["train", "--data", str(path), "--model", "tiny", "--steps", "1", "--batch-size", "2",
                 "--max-length", "32", "--output", str(out_dir), "--precision", "fp32", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert ("train data: 2 pairs tokenized; 0 prompts and 0 completions truncated; dropped (warning): "
            "1 (chosen == rejected after truncation), 1 (prompt alone reaches max_length)") in out
    assert "pass --max-prompt-length 16" in out

    assert main(["train", "--data", str(path), "--model", "tiny", "--steps", "1", "--batch-size", "2",
                 "--max-length", "32", "--max-prompt-length", "16", "--output", str(out_dir), "--precision", "fp32",
                 "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "train data: 3 pairs tokenized; 1 prompts and 0 completions truncated; dropped (warning): " \
           "1 (chosen == rejected after truncation)" in out and "--max-prompt-length 16" not in out


def test_prepare_reports_the_pairs_that_survive_tokenization(tmp_path, capsys):
    path = write(tmp_path / "pairs.jsonl", CUT_PAIRS)
    out_dir = tmp_path / "prepared"
    assert main(["data", "prepare", str(path), "--output-dir", str(out_dir), "--max-length", "32"]) == 0
    assert (f"prepared 4 train / 0 eval pairs (not tokenized: pass --model to see how many fit --max-length) in "
            f"{out_dir}") in capsys.readouterr().out
    assert main(["data", "prepare", str(path), "--output-dir", str(out_dir), "--max-length", "32",
                 "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert (f"prepared 4 train / 0 eval pairs, tokenized with max_length 32: 2 train pairs kept (2 dropped) in "
            f"{out_dir}") in out and "pass --max-prompt-length 16" in out
    info = json.loads((out_dir / "dpokit_prepared.json").read_text())
    assert info["tokenized"][0]["pairs"] == 4 and info["tokenized"][0]["kept"] == 2


def test_validate_exit_codes(tmp_path, capsys):
    """`validate` is a check: 1 when the data is faulty (a bad row or a bad file, as the README says),
    2 when it cannot check at all (no such source: a command-line mistake, as everywhere)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    not_rows = tmp_path / "numbers.jsonl"
    not_rows.write_text("1\n2\n")
    for path, code, text in ((empty, 1, "the file is empty"), (not_rows, 1, "not rows of JSON objects"),
                             (tmp_path / "missing.jsonl", 2, "preference data not found")):
        assert main(["data", "validate", str(path)]) == code
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}" if code == 1 else "error: preference data not found") and text in err
        assert "\n  fix: " in err and "Traceback" not in err


def test_fit_pair_drops_only_pairs_the_cut_makes_identical():
    from dpokit.data.tokenize import DROP_SAME_AFTER_CUT, TokenizeStats, fit_pair

    stats = TokenizeStats()
    assert fit_pair([1], [5, 6, 7, 8], [5, 6, 7, 9], 4, None, stats, "f:1") is None  # room 3: both [5, 6, 7]
    assert stats.dropped_sources == {DROP_SAME_AFTER_CUT: ["f:1"]} and stats.truncated_completion == 0
    kept = fit_pair([1], [5, 6, 7, 8], [5, 6, 9], 4, None, stats, "f:2")  # they part inside the room
    assert kept is not None and (kept.chosen_ids, kept.rejected_ids) == ([5, 6, 7], [5, 6, 9])
    assert fit_pair([1], [5, 6], [5, 7, 8, 9], 8, None, stats, "f:3", max_completion_length=1) is None
    # SFT fits its one completion as both sides: it is cut, never dropped as "identical"
    sft = fit_pair([1], [5, 6, 7, 8], [5, 6, 7, 8], 4, None, stats, "f:4")
    assert sft is not None and sft.chosen_ids == [5, 6, 7] and stats.dropped[DROP_SAME_AFTER_CUT] == 2


def test_train_with_every_pair_dropped_names_the_flag_that_keeps_them(tmp_path, capsys):
    long_prompt = " ".join(["a prompt longer than the whole sequence may be"] * 4)
    path = write(tmp_path / "long.jsonl", [{"prompt": long_prompt, "chosen": "Yes.", "rejected": "No."},
                                           {"prompt": long_prompt + " again", "chosen": "A.", "rejected": "B."}])
    assert main(["train", "--data", str(path), "--model", "tiny", "--max-length", "16", "--steps", "1",
                 "--output", str(tmp_path / "run"), "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: no training pairs left after tokenization: all 2 were dropped "
                          "(2 prompt alone reaches max_length)")
    assert ("\n  fix: to keep the 2 pairs dropped as their prompt alone reaches max_length 16: pass "
            "--max-prompt-length 8") in err and "Traceback" not in err
    assert main(["data", "validate", str(path), "--model", "tiny", "--max-length", "16"]) == 1
    out = capsys.readouterr().out
    assert "pass --max-prompt-length 8" in out
    assert out.endswith("validate: no training pair is left once tokenized at max_length 16; training would stop\n")


def test_prepare_on_a_full_disk_keeps_the_previous_prepared_data(small_disk, capsys):
    small_disk = small_disk(256 * 1024)  # a real 256 KiB tmpfs
    many = write(small_disk.parent / "many.jsonl",  # 3 MB of distinct pairs: more than the disk holds
                 [{"prompt": f"Question {i}: " + "why is the sky blue? " * 20, "chosen": f"Answer {i}: " + "light " * 80,
                   "rejected": f"No {i}."} for i in range(3000)])
    source = write(small_disk.parent / "pairs.jsonl", CUT_PAIRS)
    out = small_disk / "prepared"
    assert main(["data", "prepare", str(source), "--output-dir", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["data", "prepare", str(many), "--output-dir", str(out)]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}") and "no space left on device" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the first prepare's data, whole
    assert main(["data", "validate", str(out)]) == 0

    fresh = small_disk / "fresh"  # a folder the failed prepare made is removed with what it wrote
    assert main(["data", "prepare", str(many), "--output-dir", str(fresh)]) != 0
    assert not fresh.exists()


def test_a_full_cache_disk_names_the_cache_and_leaves_no_half_entry(small_disk, tmp_path, monkeypatch, capsys):
    small_disk = small_disk(256 * 1024)
    (small_disk / "filler").write_bytes(b"\0" * (256 * 1024 - 4096))
    monkeypatch.setenv("DPOKIT_CACHE", str(small_disk))
    source = write(tmp_path / "pairs.jsonl", CUT_PAIRS)
    out = tmp_path / "prepared"
    assert main(["data", "prepare", str(source), "--output-dir", str(out), "--model", "tiny", "--max-length", "32"]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the tokenized cache entry {small_disk / 'tokenized'}")
    assert "no space left on device" in err and "fix:" in err
    assert "Traceback" not in err and not out.exists()  # the prepare's own new folder is removed too
    assert not list((small_disk / "tokenized").iterdir())  # no half-written entry left behind
    assert main(["data", "prepare", str(source), "--output-dir", str(out), "--model", "tiny", "--max-length", "32",
                 "--tokenized-cache", "false"]) == 0  # without the cache it works


def test_a_damaged_cache_entry_is_rebuilt(tmp_path, tiny_tokenizer):
    from dpokit.data.cache import load_entry, tokenize_cached
    from dpokit.data.pairs import PreferencePair

    pairs = [PreferencePair(**GOOD, source="f:1")]
    first, _, key = tokenize_cached(pairs, tiny_tokenizer, 64, extra_dirs=(tmp_path,), save_to=tmp_path)
    entry = tmp_path / key
    for damage in (lambda: (entry / "ids.npz").write_bytes((entry / "ids.npz").read_bytes()[:40]),  # cut short
                   lambda: (entry / "stats.json").write_text('{"sources": []}')):  # no stats
        damage()
        assert load_entry(entry) is None
        again, stats, _ = tokenize_cached(pairs, tiny_tokenizer, 64, use_cache=False, save_to=tmp_path)
        assert [p.chosen_ids for p in again] == [p.chosen_ids for p in first] and stats.kept == 1
        assert load_entry(entry) is not None  # written again, whole
