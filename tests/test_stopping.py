"""Early stopping and the best step: the Trainer's rules, worked by hand, and a resumed state."""

from __future__ import annotations

import json

import pytest

from dpokit.configure import resolve
from dpokit.errors import ConfigError
from dpokit.stopping import EarlyStopping


def feed(stopper: EarlyStopping, values: list[float | None], key: str = "eval_loss", every: int = 10) -> list[bool]:
    return [stopper.update(every * (i + 1), {"eval_rewards/margins": 0.0, key: v}) for i, v in enumerate(values)]


def test_stops_when_the_eval_loss_turns_up():
    stopper = EarlyStopping(patience=2)
    assert feed(stopper, [0.7, 0.6, 0.65]) == [True, True, False]
    assert not stopper.should_stop and stopper.reason() is None
    feed_more = stopper.update(40, {"eval_loss": 0.62})  # better than 0.65, not than the best
    assert feed_more is False and stopper.should_stop
    assert stopper.best_value == 0.6 and stopper.best_step == 20
    assert stopper.reason() == ("early stopping: eval_loss has not improved on its best (0.6 at step 20) for 2 "
                                "evaluations (steps 30, 40; patience 2)")


def test_an_improvement_resets_patience():
    stopper = EarlyStopping(patience=2)
    feed(stopper, [0.7, 0.8, 0.5, 0.9])
    assert stopper.bad_evals == 1 and not stopper.should_stop and stopper.best_step == 30


def test_threshold_counts_small_gains_as_none_but_the_best_still_moves():
    stopper = EarlyStopping(patience=1, threshold=0.05)
    assert feed(stopper, [0.70, 0.68]) == [True, True]  # 0.68 is the best checkpoint ...
    assert stopper.should_stop  # ... yet 0.02 is no improvement beyond 0.05
    assert "by more than 0.05" in stopper.reason()
    stopper = EarlyStopping(patience=1, threshold=0.05)
    feed(stopper, [0.70, 0.60])
    assert not stopper.should_stop


@pytest.mark.parametrize(("name", "key", "greater"), [
    ("eval_loss", "eval_loss", False), ("loss", "eval_loss", False), ("nll_loss", "eval_nll_loss", False),
    ("rewards/accuracies", "eval_rewards/accuracies", True), ("eval_rewards/margins", "eval_rewards/margins", True),
    ("rewards/chosen", "eval_rewards/chosen", True)])
def test_direction_inferred_as_the_trainer_does(name, key, greater):
    stopper = EarlyStopping(name)
    assert stopper.metric == key and stopper.greater_is_better is greater


def test_greater_is_better_margins_and_an_explicit_direction():
    stopper = EarlyStopping("rewards/margins", patience=1)
    assert feed(stopper, [0.1, 0.3, 0.2], key="eval_rewards/margins") == [True, True, False]
    assert stopper.should_stop and stopper.best_step == 20
    lower = EarlyStopping("rewards/margins", greater_is_better=False)
    assert feed(lower, [0.1, 0.3], key="eval_rewards/margins") == [True, False]


def test_a_value_that_is_not_finite_is_no_improvement():
    stopper = EarlyStopping(patience=2)
    assert feed(stopper, [None, float("nan"), 0.5]) == [False, False, True]
    assert stopper.bad_evals == 2 and stopper.should_stop and stopper.best_step == 30


def test_without_patience_it_only_tracks_the_best():
    stopper = EarlyStopping()
    feed(stopper, [0.5, 0.9, 0.9, 0.9, 0.9])
    assert not stopper.should_stop and stopper.best_step == 10


def test_a_metric_the_evaluation_lacks_is_a_clear_error():
    with pytest.raises(ConfigError, match="'eval_acc' is not in the evaluation metrics\n  fix: use one of "
                                          "eval_loss, eval_rewards/margins"):
        EarlyStopping("acc").update(10, {"step": 10, "eval_loss": 0.5, "eval_rewards/margins": 0.1})


def test_bad_settings():
    with pytest.raises(ConfigError, match="must be at least 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ConfigError, match="0 or more"):
        EarlyStopping(threshold=-1.0)


def test_resumed_state_decides_as_an_uninterrupted_run():
    values = [0.7, 0.6, 0.65, 0.64, 0.66]
    whole = EarlyStopping(patience=3)
    feed(whole, values)
    first = EarlyStopping(patience=3)
    feed(first, values[:3])
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(state)
    for i, v in enumerate(values[3:], start=4):
        resumed.update(10 * i, {"eval_loss": v})
    assert resumed.state_dict() == whole.state_dict() and resumed.should_stop
    other = EarlyStopping("rewards/margins", patience=3)
    other.load_state_dict(state)  # another metric now: the old counters do not apply
    assert other.best_step is None and other.bad_evals == 0


def test_from_config():
    config, _, _ = resolve(["--demo", "--early-stopping-patience", "3", "--metric-for-best-model", "rewards/accuracies",
                            "--early-stopping-threshold", "0.01"])
    stopper = EarlyStopping.from_config(config.train)
    assert (stopper.metric, stopper.greater_is_better, stopper.patience, stopper.threshold) == (
        "eval_rewards/accuracies", True, 3, 0.01)
