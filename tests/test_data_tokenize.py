"""Tokenization rules, checked token by token with locally built tokenizers that have real chat
templates (Llama-3 style with a BOS token, ChatML without), plus the fallback, the cache and workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.data.cache import tokenize_cached
from dpokit.data.formats import normalise_row
from dpokit.data.pairs import PreferencePair
from dpokit.data.sources import read_source, resolve_source
from dpokit.data.tokenize import FALLBACK_CHAT_TEMPLATE, encode_pair, tokenize_pair, tokenize_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "data"
HH_RLHF = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_chat_tokenizer(style: str):
    """A byte-level BPE trained on the sample corpus, with the special tokens and template of ``style``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from dpokit.data.samples import corpus_text

    if style == "llama3":
        specials = ["<|pad|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    else:
        specials = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    if style == "llama3":  # like Llama 3: the tokenizer itself puts BOS in front of any text
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
        out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                      pad_token="<|pad|>")
        out.chat_template = LLAMA3_TEMPLATE
    else:
        out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")
        out.chat_template = CHATML_TEMPLATE
    return out


@pytest.fixture(scope="module")
def llama3():
    return build_chat_tokenizer("llama3")


@pytest.fixture(scope="module")
def chatml():
    return build_chat_tokenizer("chatml")


HEADERS = {"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "chatml": "<|im_start|>assistant\n"}


def conversational_pairs() -> list[PreferencePair]:
    pairs = []
    for name in ("ultrafeedback.jsonl", "h4_orca.jsonl", "conversational_prompt.jsonl", "orca.jsonl"):
        pairs += read_source(resolve_source(str(FIXTURES / name)))[0]
    # multi-turn, with a system message and an earlier assistant turn in the prompt
    pairs.append(PreferencePair(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is gravity?"},
         {"role": "assistant", "content": "A force."}, {"role": "user", "content": "Give an example."}],
        [{"role": "assistant", "content": "An apple falls to the ground."}],
        [{"role": "assistant", "content": "No."}]))
    return pairs


def full_ids(tokenizer, pair: PreferencePair, completion) -> list[int]:
    messages = (pair.prompt if isinstance(pair.prompt, list) else [{"role": "user", "content": pair.prompt}])
    if pair.system is not None:
        messages = [{"role": "system", "content": pair.system}] + messages
    out = tokenizer.apply_chat_template(messages + completion, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("style", ["llama3", "chatml"])
def test_prompt_plus_completion_is_the_whole_conversation_token_by_token(style, request):
    tokenizer = request.getfixturevalue(style)
    header = tokenizer(HEADERS[style], add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    for pair in conversational_pairs():
        prompt, chosen, rejected = encode_pair(pair, tokenizer)
        assert prompt + chosen == full_ids(tokenizer, pair, pair.chosen)
        assert prompt + rejected == full_ids(tokenizer, pair, pair.rejected)
        # The assistant header ends the prompt; the completion starts with the answer itself.
        assert prompt[-len(header):] == header
        assert tokenizer.decode(chosen).startswith(pair.chosen[0]["content"][:10])
        if style == "llama3":  # exactly one BOS, at the start
            assert prompt[0] == bos and prompt.count(bos) == 1 and bos not in chosen + rejected
        # No extra EOS for conversational data: the template's end-of-turn ends the completion.
        end = "<|eot_id|>" if style == "llama3" else "<|im_end|>\n"
        assert tokenizer.decode(chosen).endswith(end) and tokenizer.decode(rejected).endswith(end)


def test_text_data_gets_one_bos_and_eos(llama3):
    pair = PreferencePair("What is gravity?", " A force that pulls masses together.", " No idea.")
    prompt, chosen, rejected = encode_pair(pair, llama3)
    bos, eos = llama3.bos_token_id, llama3.eos_token_id
    assert prompt[0] == bos and (prompt + chosen).count(bos) == 1
    assert chosen[-1] == eos and rejected[-1] == eos
    assert prompt + chosen[:-1] == llama3(pair.prompt + pair.chosen)["input_ids"]


def test_fallback_template_without_a_chat_template(tiny_tokenizer):
    assert not tiny_tokenizer.chat_template
    pair = conversational_pairs()[-1]
    prompt, chosen, rejected = encode_pair(pair, tiny_tokenizer)
    whole = tiny_tokenizer.apply_chat_template(
        pair.prompt + pair.chosen, tokenize=True, chat_template=FALLBACK_CHAT_TEMPLATE)
    whole = list(whole["input_ids"] if hasattr(whole, "keys") else whole)
    assert prompt + chosen == whole
    eos = tiny_tokenizer.eos_token
    assert tiny_tokenizer.decode(prompt) == (f"System: Be brief.{eos}\nUser: What is gravity?{eos}\n"
                                             f"Assistant: A force.{eos}\nUser: Give an example.{eos}\nAssistant:")
    assert tiny_tokenizer.decode(chosen) == f" An apple falls to the ground.{eos}"


def test_chat_template_set_in_config(tiny_tokenizer):
    import copy

    from dpokit.data.tokenize import prepare_tokenizer

    tokenizer = prepare_tokenizer(copy.deepcopy(tiny_tokenizer), chat_template=CHATML_TEMPLATE)
    prompt, chosen, _ = encode_pair(conversational_pairs()[0], tokenizer)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(chosen).endswith("<|im_end|>\n")


def test_fallback_adds_bos_when_the_tokenizer_does(llama3):
    import copy

    plain = copy.deepcopy(llama3)
    plain.chat_template = None
    prompt, chosen, _ = encode_pair(conversational_pairs()[0], plain)
    assert prompt[0] == plain.bos_token_id and prompt.count(plain.bos_token_id) == 1


def test_hh_dialogues_become_chat_messages_only_with_a_template(chatml, tiny_tokenizer):
    row = json.loads((FIXTURES / "hh_rlhf.jsonl").read_text().splitlines()[6])
    pair, _ = normalise_row(row, "implicit")
    # With a template: the turns as messages, the assistant header in the prompt.
    prompt, chosen, _ = encode_pair(pair, chatml)
    assert chatml.decode(prompt).endswith("<|im_start|>user\nTell me a fact about cats.<|im_end|>\n"
                                          "<|im_start|>assistant\n")
    assert chatml.decode(chosen) == "Cats sleep for about 13 to 16 hours a day.<|im_end|>\n"
    # Without: the raw text as TRL tokenizes it (prompt, then completion + EOS).
    prompt, chosen, _ = encode_pair(pair, tiny_tokenizer)
    assert tiny_tokenizer.decode(prompt) == pair.prompt
    assert tiny_tokenizer.decode(chosen) == pair.chosen + tiny_tokenizer.eos_token


def test_truncation_and_drops(tiny_tokenizer):
    from dpokit.data.tokenize import TokenizeStats

    pair = PreferencePair("Explain gravity to me in a few words please.", " It pulls things down.", " No.",
                          source="f.jsonl:3")
    stats = TokenizeStats()
    prompt, chosen, _ = encode_pair(pair, tiny_tokenizer)
    kept = tokenize_pair(pair, tiny_tokenizer, max_length=len(prompt) + 2, stats=stats)
    assert kept.prompt_ids == prompt and len(kept.chosen_ids) == 2 and stats.truncated_completion == 1
    assert tokenize_pair(pair, tiny_tokenizer, max_length=len(prompt), stats=stats) is None
    assert stats.dropped_sources == {"prompt alone reaches max_length": ["f.jsonl:3"]}
    kept = tokenize_pair(pair, tiny_tokenizer, max_length=64, max_prompt_length=3, stats=stats)
    assert kept.prompt_ids == prompt[-3:]


@pytest.mark.skipif(not HH_RLHF.is_file(), reason="the shared HH-RLHF sample is not here")
def test_workers_give_the_same_result(tiny_tokenizer):
    pairs = read_source(resolve_source(str(HH_RLHF)), max_rows=300)[0]
    one, stats1 = tokenize_pairs(pairs, tiny_tokenizer, 128, 96, num_proc=1)
    two, stats2 = tokenize_pairs(pairs, tiny_tokenizer, 128, 96, num_proc=2)
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in two] == \
        [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in one]
    assert stats2.to_dict() == stats1.to_dict() and stats1.truncated_prompt > 0


def test_cache_second_run_reads_what_the_first_wrote(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    pairs = read_source(resolve_source(str(FIXTURES / "hh_rlhf.jsonl")))[0]
    messages: list[str] = []
    first, stats1, key1 = tokenize_cached(pairs, tiny_tokenizer, 64, log=messages.append)
    assert not messages and (tmp_path / "tokenized" / key1 / "ids.npz").is_file()
    second, stats2, key2 = tokenize_cached(pairs, tiny_tokenizer, 64, log=messages.append)
    assert key2 == key1 and "read from the cache" in messages[0]
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in second] == \
        [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in first]
    assert stats2.summary() == stats1.summary()
    # Another setting, other data or another tokenizer: another key.
    assert tokenize_cached(pairs, tiny_tokenizer, 32)[2] != key1
    assert tokenize_cached(pairs[1:], tiny_tokenizer, 64)[2] != key1
    import copy

    other = copy.deepcopy(tiny_tokenizer)
    other.chat_template = CHATML_TEMPLATE
    assert tokenize_cached(pairs, other, 64)[2] != key1
