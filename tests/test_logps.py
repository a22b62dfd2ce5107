"""The chunked log-prob path against the plain full-logits path, on real (tiny, local) models,
including models that post-process their logits."""

from __future__ import annotations

import pytest
import torch

from dpokit.data.collate import LAYOUTS, collate
from dpokit.data.pairs import TokenizedPair
from dpokit.errors import ConfigError
from dpokit.logps import SequenceScorer, head_matches_forward, model_inputs, plain_sequence_logps

pytestmark = pytest.mark.usefixtures("one_thread")


def random_pairs(vocab: int, seed: int = 0) -> list[TokenizedPair]:
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    return [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in [(9, 4, 7), (17, 6, 3), (2, 5, 5), (0, 4, 2)]]


def load(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    """Same parameters, and each gradient equal up to fp32 rounding: ||a - b|| <= rel ||b||."""
    assert a.keys() == b.keys() and len(b) > 0
    for name, g in b.items():
        err = ((a[name] - g).norm() / g.norm().clamp(min=1e-30)).item()
        assert err <= rel, f"{name}: relative gradient error {err:.2e}"


def assert_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    err = ((a - b).abs() / b.abs().clamp(min=1e-30)).max().item()
    assert err <= rel, f"relative error {err:.2e} > {rel:.0e}"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_equals_plain_path(arch, layout, request, tiny_tokenizer):
    """Log-probs, mean logits and gradients of the chunked path (several chunks) = full logits."""
    model = load(request.getfixturevalue(f"{arch}_dir"))
    batch = collate(random_pairs(len(tiny_tokenizer)), layout, tiny_tokenizer.pad_token_id)
    weights = torch.linspace(-1.0, 2.0, 2 * batch.num_pairs)  # a loss that weighs each sequence differently

    chunked = SequenceScorer(model, chunk_size=7)(batch)
    (chunked.logps * weights).sum().backward()
    chunked_grads = grads(model)
    plain = plain_sequence_logps(model, batch)
    (plain.logps * weights).sum().backward()
    plain_grads = grads(model)

    assert_rel(chunked.logps, plain.logps, 1e-6)
    torch.testing.assert_close(chunked.logits_mean, plain.logits_mean, rtol=1e-5, atol=1e-6)
    assert torch.equal(chunked.tokens, plain.tokens)
    assert_grads_close(chunked_grads, plain_grads)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prompt_logps_chunked_equal_plain_path(layout, llama_dir, tiny_tokenizer):
    """The chosen prompts' log-probs come from the same chunks as the completions' (chunks of 7
    straddle the two): values and gradients equal the full-logits path; the completions' numbers
    are those of a batch without prompts."""
    model = load(llama_dir)
    pairs = random_pairs(len(tiny_tokenizer))
    batch = collate(pairs, layout, tiny_tokenizer.pad_token_id, prompt_logps=True)
    weights = torch.linspace(-1.0, 2.0, batch.num_pairs)

    chunked = SequenceScorer(model, chunk_size=7)(batch)
    (chunked.prompt_logps * weights).sum().backward()
    chunked_grads = grads(model)
    plain = plain_sequence_logps(model, batch)
    (plain.prompt_logps * weights).sum().backward()
    plain_grads = grads(model)

    assert chunked.prompt_tokens.tolist() == [max(0, len(p.prompt_ids) - 1) for p in pairs] == [8, 16, 1, 0]
    assert_rel(chunked.prompt_logps[:3], plain.prompt_logps[:3], 1e-6)
    assert chunked.prompt_logps[3] == 0.0  # an empty prompt scores nothing
    assert_grads_close(chunked_grads, plain_grads)
    with torch.no_grad():
        alone = SequenceScorer(model, chunk_size=7)(collate(pairs, layout, tiny_tokenizer.pad_token_id))
    assert alone.prompt_logps is None
    torch.testing.assert_close(chunked.logps.detach(), alone.logps, rtol=1e-6, atol=0)
    torch.testing.assert_close(chunked.logits_mean, alone.logits_mean, rtol=1e-6, atol=1e-7)


def build_gemma2(path, tokenizer, cap: float):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                          final_logit_softcapping=cap, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    Gemma2ForCausalLM(config).save_pretrained(path)
    return load(path, attn_implementation="eager")


@pytest.mark.parametrize("layout", ["padded", "prefix"])
def test_final_logit_softcapping_gemma2(layout, tmp_path, tiny_tokenizer):
    """Gemma 2 caps its logits (tanh(z / cap) * cap): the chunked path applies the same cap."""
    model = build_gemma2(tmp_path, tiny_tokenizer, cap=0.05)
    batch = collate(random_pairs(len(tiny_tokenizer)), layout, tiny_tokenizer.pad_token_id)
    assert head_matches_forward(model, batch.input_ids)
    with torch.no_grad():
        chunked = SequenceScorer(model)(batch).logps
        plain = plain_sequence_logps(model, batch).logps  # the model's own (capped) logits
        model.config.final_logit_softcapping = None  # what ignoring the cap would give
        uncapped = SequenceScorer(model)(batch).logps
    assert_rel(chunked, plain, 1e-6)
    assert ((uncapped - plain).abs() / plain.abs()).max() > 1e-2  # the cap matters on this model


def test_granite_logit_division(tmp_path, tiny_tokenizer):
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    GraniteForCausalLM(GraniteConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, logits_scaling=0.05,
        pad_token_id=tiny_tokenizer.pad_token_id)).save_pretrained(tmp_path)
    model = load(tmp_path)
    batch = collate(random_pairs(len(tiny_tokenizer)), "prefix", tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        assert_rel(SequenceScorer(model)(batch).logps, plain_sequence_logps(model, batch).logps, 1e-6)


def test_unknown_logit_postprocessing_falls_back(llama_dir, tiny_tokenizer):
    """A model whose forward changes its logits in a way we do not know: detected, plain path used."""
    from transformers import LlamaForCausalLM

    class ScaledLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0 + 0.5
            return out

    model = ScaledLlama.from_pretrained(llama_dir, dtype=torch.float32)
    batch = collate(random_pairs(len(tiny_tokenizer)), "packed", tiny_tokenizer.pad_token_id)
    with pytest.warns(UserWarning, match="post-processes its logits"):
        scored = SequenceScorer(model)(batch)
    assert model._dpokit_head_matches is False
    plain = plain_sequence_logps(model, batch)
    assert_rel(scored.logps, plain.logps, 1e-6)
    model._dpokit_head_matches = True  # force the chunked path: it would be wrong here
    assert ((SequenceScorer(model)(batch).logps - plain.logps).abs() / plain.logps.abs()).max() > 1e-2


def test_unknown_cap_hidden_by_small_logits_is_found(llama_dir, tiny_tokenizer):
    """A soft cap under a name dpokit does not know barely touches a random model's small logits;
    the check enlarges them, finds the cap, and restores the head's weights exactly."""
    from transformers import LlamaForCausalLM

    class CappedLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = torch.tanh(out.logits / 30.0) * 30.0
            return out

    model = CappedLlama.from_pretrained(llama_dir, dtype=torch.float32)
    head_before = model.get_output_embeddings().weight.detach().clone()
    batch = collate(random_pairs(len(tiny_tokenizer)), "prefix", tiny_tokenizer.pad_token_id)
    with pytest.warns(UserWarning, match="post-processes its logits"):
        scored = SequenceScorer(model)(batch)
    assert model._dpokit_head_matches is False
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    assert_rel(scored.logps, plain_sequence_logps(model, batch).logps, 1e-6)


def test_mask_in_autocast_dtype(llama_dir, tiny_tokenizer):
    """Under bf16 autocast the additive mask is built in bf16; log-probs stay close to fp32."""
    model = load(llama_dir)
    batch = collate(random_pairs(len(tiny_tokenizer)), "prefix", tiny_tokenizer.pad_token_id)
    assert model_inputs(model, batch)["attention_mask"].dtype == torch.float32
    with torch.no_grad():
        fp32 = SequenceScorer(model)(batch).logps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask = model_inputs(model, batch)["attention_mask"]
            bf16 = SequenceScorer(model)(batch).logps
    rows, width = batch.input_ids.shape
    assert mask.dtype == torch.bfloat16 and mask.shape == (rows, 1, width, width)
    assert bf16.dtype == torch.float32
    assert_rel(bf16, fp32, 2e-2)


def test_flash_attention_inputs(llama_dir, tiny_tokenizer):
    """Flash kernels: packed batches go mask-free (varlen from position ids); prefix is refused."""
    model = load(llama_dir)
    model.config._attn_implementation = "flash_attention_2"
    pairs = random_pairs(len(tiny_tokenizer))
    packed = collate(pairs, "packed", tiny_tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] > 1  # several rows: they must reach the kernel as one
    inputs = model_inputs(model, packed)
    assert inputs["attention_mask"] is None
    assert torch.equal(inputs["input_ids"], packed.input_ids.reshape(1, -1))
    assert torch.equal(inputs["position_ids"], packed.position_ids.reshape(1, -1))
    padded = collate(pairs, "padded", tiny_tokenizer.pad_token_id)
    assert model_inputs(model, padded)["attention_mask"].dim() == 2
    with pytest.raises(ConfigError, match="--layout packed"):
        model_inputs(model, collate(pairs, "prefix", tiny_tokenizer.pad_token_id))


def test_compiled_decoder_gives_same_numbers(llama_dir, tiny_tokenizer):
    """``--compile`` wiring: the decoder traced by dynamo (the eager backend keeps the test fast)."""
    from dpokit.logps import compile_decoder

    model = load(llama_dir)
    pairs = random_pairs(len(tiny_tokenizer))
    batches = [collate(pairs, layout, tiny_tokenizer.pad_token_id) for layout in ("prefix", "packed")]
    with torch.no_grad():
        expected = [SequenceScorer(model)(b).logps for b in batches]
    compile_decoder(model, backend="eager")
    assert "_orig_mod" not in "".join(model.state_dict())  # parameter names unchanged
    with torch.no_grad():
        for batch, want in zip(batches, expected):
            assert_rel(SequenceScorer(model)(batch).logps, want, 1e-6)


@pytest.mark.parametrize("config, max_length, expected", [
    ({"model_type": "mistral", "sliding_window": 8}, 128, "padded"),  # the window would be lost
    ({"model_type": "mistral", "sliding_window": 4096}, 128, "prefix"),  # never bites at this length
    ({"model_type": "qwen2", "sliding_window": 8, "use_sliding_window": False}, 128, "prefix"),
    ({"model_type": "falcon", "alibi": True}, 128, "padded"),
    ({"model_type": "gpt_neo", "attention_types": [[["global", "local"], 1]], "window_size": 8}, 128, "padded"),
    ({"model_type": "gpt_neo", "attention_types": [[["global"], 2]], "window_size": 8}, 128, "prefix"),
    ({"model_type": "llama", "attn_implementation": "flash_attention_2"}, 128, "packed"),  # no mask there
    ({"model_type": "llama"}, 128, "prefix"),
])
def test_layout_falls_back_where_the_mask_would_change_attention(config, max_length, expected):
    from transformers import AutoConfig, AutoModelForCausalLM

    from dpokit.logps import layout_for

    kind = config.pop("model_type")
    attn = config.pop("attn_implementation", None)
    tiny = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_hidden_layers": 2 if kind == "gpt_neo" else 1, "num_key_value_heads": 2}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **tiny, **config))
    if attn is not None:  # the kernel is not installed here: only the config says which one runs
        model.config._attn_implementation = attn
    layout, why = layout_for(model, "prefix", max_length)
    assert layout == expected
    assert (why is None) == (expected == "prefix")


@pytest.mark.parametrize("kind, text, expected", [
    ("gemma3", {"sliding_window": 8}, 8),  # composite: the window sits in text_config
    ("llama4", {"attention_chunk_size": 16}, 16),  # chunked attention is a window by another name
    ("llama", {}, None),
])
def test_attention_window_is_found_where_the_config_keeps_it(kind, text, expected):
    from transformers import AutoConfig

    from dpokit.logps import attention_window

    if kind == "llama":
        config = AutoConfig.for_model(kind)
    else:
        config = AutoConfig.for_model(kind, text_config=text)
    assert attention_window(config) == expected


def test_sliding_window_is_why_prefix_would_differ(tiny_tokenizer):
    """The reason for the fallback: with a window shorter than the sequences, the packing
    layouts' own mask (no window) gives other numbers than the model's padded attention."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                             num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=2,
                                             sliding_window=4, attn_implementation="eager")).eval()
    pairs = random_pairs(len(tiny_tokenizer))
    with torch.no_grad():
        padded = SequenceScorer(model)(collate(pairs, "padded", tiny_tokenizer.pad_token_id)).logps
        prefix = SequenceScorer(model)(collate(pairs, "prefix", tiny_tokenizer.pad_token_id)).logps
    assert not torch.allclose(padded, prefix, rtol=1e-4)
