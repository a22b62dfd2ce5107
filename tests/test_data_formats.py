"""Every format and source users bring, read from fixture files in the schemas of ANCHORS.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.config import DataConfig
from dpokit.data.implicit import split_turns
from dpokit.data.jsonl import read_preference_jsonl
from dpokit.data.sources import load_train_eval, read_source, resolve_source
from dpokit.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' own cache for local "hub" directories inside the test."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    return tmp_path


def write_parquet(path: Path, table_rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table_rows), path)
    return path


def hub_dir(root: Path, splits: dict[str, list[dict]]) -> Path:
    """A directory laid out like a hub data set repository: data/{split}-00000-of-00001.parquet."""
    for split, split_rows in splits.items():
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", split_rows)
    return root


def test_plain_jsonl():
    pairs = read_preference_jsonl(FIXTURES / "plain.jsonl")
    assert len(pairs) == 6
    first = rows("plain.jsonl")[0]
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == (first["prompt"], first["chosen"], first["rejected"])
    assert not pairs[0].conversational and pairs[0].source.endswith("plain.jsonl:1")


def test_ultrafeedback_whole_conversations():
    pairs, report = read_source(resolve_source(str(FIXTURES / "ultrafeedback.jsonl")))
    assert report.format == "conversational" and report.pairs == 6 and not report.problems
    row = rows("ultrafeedback.jsonl")[0]
    # The prompt is the shared user turn; each completion is its assistant turn.
    assert pairs[0].prompt == [{"role": "user", "content": row["prompt"]}]
    assert pairs[0].chosen == [row["chosen"][1]] and pairs[0].rejected == [row["rejected"][1]]


def test_ultrafeedback_from_a_hub_style_directory_with_splits(hf_cache, tmp_path):
    uf = rows("ultrafeedback.jsonl")
    root = hub_dir(tmp_path / "ultrafeedback_binarized", {"train_prefs": uf, "test_prefs": uf[:2]})
    # The same call path as a hub id: datasets.load_dataset(id, config_name, split=...).
    cfg = DataConfig(path=str(root), split="train_prefs", eval_split="test_prefs")
    train, evaluation = load_train_eval(cfg, seed=0)
    assert len(train) == 6 and len(evaluation) == 2
    assert train[0].chosen == [uf[0]["chosen"][1]]
    assert "train_prefs" in train[0].source and train[0].source.endswith("#0")


def test_hh_rlhf_implicit_prompt():
    pairs, report = read_source(resolve_source(str(FIXTURES / "hh_rlhf.jsonl")))
    assert report.format == "implicit" and report.pairs == 7
    first = rows("hh_rlhf.jsonl")[0]
    assert pairs[0].prompt == "\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert pairs[0].chosen == " The capital of France is Paris."  # the space stays with the answer, as TRL cuts it
    assert pairs[0].prompt + pairs[0].chosen == first["chosen"] and pairs[0].prompt + pairs[0].rejected == first["rejected"]
    # Multi-turn: the prompt is every shared whole turn, ending with the last assistant marker.
    multi = pairs[6]
    assert multi.prompt.endswith("Tell me a fact about cats.\n\nAssistant:") and multi.rejected == " No."
    assert multi.as_chat.prompt == [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a fact about cats."}]
    assert multi.as_chat.rejected == [{"role": "assistant", "content": "No."}]


def test_implicit_prompt_uses_whole_turns_not_shared_characters():
    """Both answers start with "I "; a character-level common prefix would cut inside the answer."""
    row = {"chosen": "\n\nHuman: Can you help?\n\nAssistant: I can, gladly.",
           "rejected": "\n\nHuman: Can you help?\n\nAssistant: I cannot."}
    from dpokit.data.formats import normalise_row

    pair, note = normalise_row(row, "implicit")
    assert pair.prompt == "\n\nHuman: Can you help?\n\nAssistant:" and pair.chosen == " I can, gladly."
    assert note is None


def test_implicit_prompt_when_dialogues_part_early():
    """Chosen and rejected already differ in an earlier assistant turn: the prompt stops there."""
    row = {"chosen": "\n\nHuman: A?\n\nAssistant: one\n\nHuman: B?\n\nAssistant: two",
           "rejected": "\n\nHuman: A?\n\nAssistant: uno"}
    from dpokit.data.formats import normalise_row

    pair, note = normalise_row(row, "implicit")
    assert pair.prompt == "\n\nHuman: A?\n\nAssistant:"
    assert pair.chosen == " one\n\nHuman: B?\n\nAssistant: two" and pair.rejected == " uno"
    assert note is not None and note.level == "note"
    assert pair.as_chat.chosen == [{"role": "assistant", "content": "one"}, {"role": "user", "content": "B?"},
                                   {"role": "assistant", "content": "two"}]


def test_split_turns():
    assert split_turns("\n\nHuman: hi\n\nAssistant: yo") == [("user", "\n\nHuman:", " hi"),
                                                              ("assistant", "\n\nAssistant:", " yo")]


def test_intel_orca_system_and_question():
    pairs, report = read_source(resolve_source(str(FIXTURES / "orca.jsonl")))
    assert report.format == "orca" and report.pairs == 6
    src = rows("orca.jsonl")
    assert pairs[0].prompt == [{"role": "user", "content": src[0]["question"]}]  # empty system: none
    assert pairs[1].prompt == [{"role": "system", "content": src[1]["system"]},
                               {"role": "user", "content": src[1]["question"]}]
    assert pairs[1].chosen == [{"role": "assistant", "content": src[1]["chosen"]}]


def test_intel_orca_from_parquet(tmp_path):
    path = write_parquet(tmp_path / "orca.parquet", rows("orca.jsonl"))
    pairs, report = read_source(resolve_source(str(path)))
    assert report.format == "orca" and len(pairs) == 6 and pairs[0].source == f"{path}#0"


def test_h4_orca_prompt_string_and_message_lists():
    pairs, report = read_source(resolve_source(str(FIXTURES / "h4_orca.jsonl")))
    assert report.format == "conversational"
    row = rows("h4_orca.jsonl")[0]
    assert pairs[0].prompt == row["chosen"][:2]  # system + user
    assert pairs[0].chosen == row["chosen"][2:] and pairs[0].rejected == row["rejected"][2:]


def test_explicit_conversational_prompt():
    pairs, _ = read_source(resolve_source(str(FIXTURES / "conversational_prompt.jsonl")))
    row = rows("conversational_prompt.jsonl")[0]
    assert pairs[0].prompt == row["prompt"] and pairs[0].chosen == row["chosen"]


def test_user_column_mapping(tmp_path):
    cfg = DataConfig(path=str(FIXTURES / "mapped.jsonl"),
                     columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    train, _ = load_train_eval(cfg, seed=0)
    src = rows("mapped.jsonl")[2]
    assert (train[2].prompt, train[2].chosen, train[2].rejected) == (src["question"], src["good"], src["bad"])
    # A mapping that names a column the data does not have says which one.
    with pytest.raises(DataError, match="missing column 'query'") as e:
        load_train_eval(DataConfig(path=str(FIXTURES / "mapped.jsonl"), columns={"prompt": "query"}), seed=0)
    assert e.value.line == 1


def test_format_override():
    hh = str(FIXTURES / "hh_rlhf.jsonl")
    auto, _ = load_train_eval(DataConfig(path=hh), seed=0)
    forced, _ = load_train_eval(DataConfig(path=hh, format="implicit"), seed=0)
    assert [p.to_dict() for p in auto] == [p.to_dict() for p in forced]
    with pytest.raises(DataError, match="missing column 'prompt'") as e:
        load_train_eval(DataConfig(path=hh, format="plain"), seed=0)
    assert "format: implicit" in e.value.hint


def test_json_array_csv_and_saved_directory(tmp_path, hf_cache):
    src = rows("plain.jsonl")
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps(src, indent=2), encoding="utf-8")
    pairs, report = read_source(resolve_source(str(array)))
    assert len(pairs) == 6 and pairs[1].source == f"{array}:7"  # each item's line in the file

    import pyarrow as pa
    import pyarrow.csv as pcsv

    csv = tmp_path / "pairs.csv"
    pcsv.write_csv(pa.Table.from_pylist(src), csv)
    pairs, report = read_source(resolve_source(str(csv)))
    assert report.format == "plain" and pairs[3].chosen == src[3]["chosen"]

    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(src),
                          "test": datasets.Dataset.from_list(src[:2])}).save_to_disk(str(saved))
    train, evaluation = load_train_eval(DataConfig(path=str(saved), eval_split="test"), seed=0)
    assert len(train) == 6 and len(evaluation) == 2


def test_hub_id_call_path_offline_is_a_clear_error(monkeypatch):
    import datasets
    import huggingface_hub

    # Offline even if `datasets` was imported before HF_HUB_OFFLINE was set (no network retries).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot load the data set") as e:
        read_source(resolve_source("someone/no-such-preference-data"))
    assert "network" in e.value.hint


def test_presets_pick_hub_id_split_and_format(tmp_path, monkeypatch):
    spec = resolve_source("ultrafeedback")
    assert (spec.kind, spec.location, spec.split, spec.format) == (
        "hub", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "conversational")
    spec = resolve_source("hh_rlhf")
    assert (spec.location, spec.split, spec.format) == ("Anthropic/hh-rlhf", "train", "implicit")
    spec = resolve_source("orca", split="train")
    assert (spec.location, spec.format) == ("Intel/orca_dpo_pairs", "orca")
    # The preset's hub id alone gets its split; a user's split and format win.
    assert resolve_source("HuggingFaceH4/ultrafeedback_binarized").split == "train_prefs"
    assert resolve_source("ultrafeedback", split="test_prefs", fmt="plain").split == "test_prefs"
    # A local directory of that name wins over the preset.
    (tmp_path / "orca").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_source("orca").location == "orca"


def test_missing_local_path_is_not_mistaken_for_a_hub_id():
    with pytest.raises(DataError, match="not found") as e:
        resolve_source("data/my_prefs.jsonl")
    assert e.value.reason == "missing file"


def test_eval_sources_and_max_samples():
    plain = str(FIXTURES / "plain.jsonl")
    train, evaluation = load_train_eval(DataConfig(path=plain, eval_path=str(FIXTURES / "orca.jsonl")), seed=0)
    assert len(train) == 6 and len(evaluation) == 6 and evaluation[0].conversational
    train, evaluation = load_train_eval(DataConfig(path=plain, eval_fraction=0.34), seed=0)
    assert len(train) == 4 and len(evaluation) == 2
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in evaluation})
    train, _ = load_train_eval(DataConfig(path=plain, max_samples=3), seed=0)
    assert [p.source[-1] for p in train] == ["1", "2", "3"]
