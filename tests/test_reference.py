"""Reference strategies (reference.py): every strategy gives the same first-step loss, rewards and
reference log-probs on the same batch; the precomputed cache is reused; TR-DPO's refresh mixes
the policy into the reference; impossible combinations are refused."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from dpokit.configure import build_config
from dpokit.errors import ConfigError
from dpokit.lora import find_peft
from dpokit.reference import META_KEY, AdapterDisabled, FrozenModel, Precomputed, Reference
from dpokit.tasks.preference import loss_inputs
from dpokit.train import setup, train_step


def make_config(out: Path, model: Path | str, **keys):
    flat = {"model.name_or_path": str(model), "model.precision": "fp32", "model.device": "cpu",
            "data.sample_size": 6, "data.max_length": 48, "data.tokenized_cache": False,
            "train.batch_size": 6, "train.steps": 2, "train.lr": 1e-3, "train.warmup_steps": 0,
            "output.dir": str(out), "output.progress": False, "output.save_steps": 0}
    flat.update(keys)
    return build_config(flat)


def lora_deltas(run) -> dict[str, torch.Tensor]:
    """Give the LoRA B matrices seeded random values; returns each adapted layer's weight update."""
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(run.policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    base = find_peft(run.policy).get_base_model()
    return {name: m.get_delta_weight("default").detach().clone()
            for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def add_deltas(run, deltas: dict[str, torch.Tensor]) -> None:
    """The same update on a fully trained policy: W <- W + delta."""
    with torch.no_grad():
        for name, delta in deltas.items():
            run.policy.get_submodule(name).weight.add_(delta)


def first_step(run):
    """Loss, rewards and reference log-probs of the first batch (all pairs, in order)."""
    pairs = run.task.train
    batch = run.task.batch(pairs)
    policy, reference = run.scorer(batch), run.task.reference.logps(batch, pairs)
    out = run.task.spec.fn(loss_inputs(policy, reference, run.config.loss.beta), run.config.loss)
    return {"loss": out.losses.detach().mean(), "chosen_rewards": out.chosen_rewards,
            "rejected_rewards": out.rejected_rewards, "reference": reference.logps.detach()}


def test_all_strategies_agree_on_the_first_step(tmp_path, llama_dir):
    # The policy is moved away from the reference by the same update in every run (LoRA's B A, or
    # the same B A added to the weights), so rewards are non-zero and the check has teeth.
    lora_keys = {"model.lora": True, "model.lora_r": 4}
    full, lora = {}, {}
    deltas = None
    for name, keys in {
        "lora": {},
        "lora+model": {"model.ref_model": str(llama_dir)},
        "lora+precomputed": {"model.reference": "precomputed"},
    }.items():
        run = setup(make_config(tmp_path / name, llama_dir, **lora_keys, **keys))
        deltas = lora_deltas(run)
        lora[name] = first_step(run)
        assert run.task.reference.name == name.split("+")[-1]
        assert isinstance(run.task.reference, AdapterDisabled) == (name == "lora")
        train_step(run)  # and a real optimizer step runs with it
    for name, keys in {
        "copy": {},
        "model": {"model.ref_model": str(llama_dir)},
        "precomputed": {"model.reference": "precomputed"},
        "precomputed+model": {"model.reference": "precomputed", "model.ref_model": str(llama_dir)},
    }.items():
        run = setup(make_config(tmp_path / name, llama_dir, **keys))
        add_deltas(run, deltas)
        full[name] = first_step(run)
        assert run.task.reference.name == name.split("+")[0]
        train_step(run)

    base = full["copy"]
    assert base["chosen_rewards"].abs().min() > 1e-3  # policy != reference: real rewards
    for family, results in (("full", full), ("lora", lora)):
        first = results[next(iter(results))]
        for name, got in results.items():  # the same policy: every strategy agrees to fp32 rounding
            for key in base:
                torch.testing.assert_close(got[key], first[key], rtol=1e-6, atol=0, msg=f"{family} {name}: {key}")
    # Across families the reference log-probs agree to rounding as well. The policies differ only
    # in how the same update is computed (W + BA against W x + B A x), which moves the policy
    # log-probs by ~1e-6 and so the rewards (beta * (pi - ref)) by ~1e-5 relative.
    torch.testing.assert_close(lora["lora"]["reference"], base["reference"], rtol=1e-6, atol=0)
    for key in ("loss", "chosen_rewards", "rejected_rewards"):
        torch.testing.assert_close(lora["lora"][key], base[key], rtol=2e-4, atol=1e-6, msg=key)


def test_untouched_policy_gives_ln2_with_every_strategy(tmp_path, llama_dir):
    for name, keys in {"lora": {"model.lora": True}, "copy": {}, "precomputed": {"model.reference": "precomputed"}}.items():
        run = setup(make_config(tmp_path / name, llama_dir, **keys))
        got = first_step(run)
        assert got["loss"].item() == pytest.approx(math.log(2), abs=1e-6), name
        assert got["chosen_rewards"].abs().max().item() < 1e-6


def test_precomputed_cache_is_reused_and_keyed_by_the_model(tmp_path, llama_dir, gpt2_dir, dpokit_cache, monkeypatch):
    import dpokit.reference as reference

    keys = {"model.reference": "precomputed", "data.sample_size": 5}
    run = setup(make_config(tmp_path / "a", llama_dir, **keys))
    first = [p.meta[META_KEY] for p in run.task.train]
    files = set((dpokit_cache / "reference").glob("*.safetensors"))
    assert files
    assert isinstance(run.task.reference, Precomputed)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(run.task.reference).values())

    def no_pass(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(reference, "score_pairs", no_pass)
    again = setup(make_config(tmp_path / "b", llama_dir, **keys))
    assert [p.meta[META_KEY] for p in again.task.train] == first
    with pytest.raises(AssertionError, match="cache"):  # another reference model: another key
        setup(make_config(tmp_path / "c", llama_dir, **keys, **{"model.ref_model": str(gpt2_dir)}))
    with pytest.raises(AssertionError, match="cache"):  # other settings: another key
        setup(make_config(tmp_path / "d", llama_dir, **keys, **{"data.max_length": 40}))


@pytest.mark.parametrize("mix", [1.0, 0.25])
def test_tr_dpo_refresh_mixes_the_policy_into_the_reference(tmp_path, llama_dir, mix):
    run = setup(make_config(tmp_path, llama_dir, **{"model.ref_refresh_steps": 2, "model.ref_refresh_mix": mix}))
    assert isinstance(run.task.reference, FrozenModel)
    name = "model.layers.0.mlp.up_proj.weight"
    ref_param = dict(run.task.reference.model.named_parameters())[name]
    pol_param = dict(run.policy.named_parameters())[name]
    start = ref_param.detach().clone()
    train_step(run)  # step 1: no refresh yet
    assert torch.equal(ref_param, start)
    assert not torch.equal(pol_param, start)
    train_step(run)  # step 2: ref <- mix * policy + (1 - mix) * ref
    expected = mix * pol_param.detach() + (1 - mix) * start
    torch.testing.assert_close(ref_param.detach(), expected, rtol=1e-6, atol=1e-7)


def test_auto_picks_the_strategy(tmp_path, llama_dir):
    from dpokit.losses import LOSSES
    from dpokit.reference import strategy_name

    def pick(**keys):
        return strategy_name(make_config(tmp_path, llama_dir, **keys).model, True)

    assert pick() == "copy"
    assert pick(**{"model.lora": True}) == "lora"
    assert pick(**{"model.ref_model": "x"}) == "model"
    assert pick(**{"model.lora": True, "model.ref_model": "x"}) == "model"
    assert strategy_name(make_config(tmp_path, llama_dir).model, False) == "none"
    free = [name for name, spec in LOSSES.items() if not spec.needs_reference]
    for asked in ("auto", "copy"):  # a reference-free loss runs with no reference, whatever was asked
        run = setup(make_config(tmp_path, llama_dir, **{"loss.loss_type": free[0], "model.reference": asked}))
        assert type(run.task.reference) is Reference
        assert run.task.reference.logps(run.task.batch(run.task.train[:2]), run.task.train[:2]) is None


def test_reference_none_with_dpo_is_reference_free_dpo(tmp_path, llama_dir):
    """TRL's reference_free: reference log-probs are 0, so the first-step loss is not ln 2 but
    -log sigmoid(beta * (logp_w - logp_l)) and the rewards are beta * the policy's log-probs."""
    from dpokit.reference import Zeros
    from dpokit.tasks.preference import loss_inputs

    run = setup(make_config(tmp_path, llama_dir, **{"model.reference": "none"}))
    assert isinstance(run.task.reference, Zeros)
    pairs = run.task.train[:2]
    with torch.no_grad():
        batch = run.task.batch(pairs)
        policy, reference = run.scorer(batch), run.task.reference.logps(batch, pairs)
        out = run.task.spec.fn(loss_inputs(policy, reference, 0.1), run.config.loss)
    assert torch.equal(reference.logps, torch.zeros(4))
    expected = -torch.nn.functional.logsigmoid(0.1 * (policy.chosen - policy.rejected))
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.chosen_rewards, 0.1 * policy.chosen)


@pytest.mark.parametrize("keys, message", [
    ({"model.lora": True, "model.ref_refresh_steps": 5}, "TR-DPO"),
    ({"model.reference": "precomputed", "model.ref_refresh_steps": 5}, "TR-DPO"),
])
def test_impossible_combinations_are_refused(tmp_path, llama_dir, keys, message):
    with pytest.raises(ConfigError, match=message):
        setup(make_config(tmp_path, llama_dir, **keys))


@pytest.mark.parametrize("keys, message", [
    ({"model.reference": "model"}, "needs model.ref_model"),
    ({"model.reference": "lora"}, "needs LoRA"),
    ({"model.reference": "copy", "model.load_in_4bit": True}, "cannot be copied"),
    ({"model.reference": "copy", "model.ref_model": "x"}, "does not use it"),
    ({"model.ref_refresh_mix": 0.0}, "ref_refresh_mix"),
])
def test_bad_reference_settings_are_config_errors(tmp_path, llama_dir, keys, message):
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, llama_dir, **keys)


def test_refresh_needs_the_same_architecture(tmp_path, llama_dir, gpt2_dir):
    with pytest.raises(ConfigError, match="architecture"):
        setup(make_config(tmp_path, llama_dir, **{"model.ref_model": str(gpt2_dir), "model.ref_refresh_steps": 1}))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_frozen_reference_cast_once_is_exact_under_autocast(tmp_path, tiny_tokenizer, arch):
    """A frozen reference under bf16 keeps its linear weights in bf16 (cast once, not per batch), and
    its log-probs equal those of the fp32 copy under autocast bit for bit; norms and embeddings
    stay fp32. GPT-2's Conv1D layers and its tied head are left as they are."""
    from tests.conftest import make_random_model

    model = make_random_model(arch, tmp_path / arch, tiny_tokenizer)
    run = setup(make_config(tmp_path / "out", model, **{"model.precision": "bf16"}))
    reference = run.task.reference
    assert isinstance(reference, FrozenModel)
    fp32 = FrozenModel(copy.deepcopy(run.policy), "copy")  # the same weights, all kept fp32
    dtypes = {n: p.dtype for n, p in reference.model.named_parameters()}
    assert all(dtype == torch.float32 for n, dtype in dtypes.items() if "norm" in n or "ln_" in n or "emb" in n
               or "wte" in n or "wpe" in n)  # GPT-2's head is tied to wte: fp32 too
    if arch == "llama":
        assert dtypes["lm_head.weight"] == dtypes["model.layers.0.self_attn.q_proj.weight"] == torch.bfloat16
    batch = run.task.batch(run.task.train)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast, plain = reference.logps(batch, run.task.train), fp32.logps(batch, run.task.train)
    assert torch.equal(cast.logps, plain.logps)
    train_step(run)  # and a training step runs with it


def test_refreshed_reference_stays_fp32(tmp_path, tiny_dir):
    """TR-DPO mixes the policy into the reference: its weights keep fp32 under bf16."""
    run = setup(make_config(tmp_path / "out", tiny_dir, **{"model.precision": "bf16",
                                                            "model.ref_refresh_steps": 1}))
    assert all(p.dtype == torch.float32 for p in run.task.reference.model.parameters())
