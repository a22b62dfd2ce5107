"""What the loop reports and decides beside the steps, in one place `fit` reads top to bottom:

* the training row of a logging window: the task's metrics under TRL's names, the learning rate,
  throughput (tokens/s, seconds per step) and MFU (``flops.py`` over ``peak.py``'s peak), every
  rank's peak memory; then the margin logs, the progress bar's postfix and the diagnostics;
* early stopping and the best checkpoint (``stopping.py``), kept out of ``save_total_limit``'s
  rotation and, with ``load_best_model_at_end``, made ``final/``;
* the mirror (``mirror_dir``): each checkpoint as it is written, the final model and the logs.

`state_dict` holds what a checkpoint must keep of it (the diagnostics' memory, the early stopper's).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dpokit import dist
from dpokit.card import write_model_card
from dpokit.diagnostics import Diagnostics
from dpokit.divergence import Divergence
from dpokit.errors import DpokitError
from dpokit.flops import throughput_row
from dpokit.mirror import Mirror
from dpokit.peak import Peak
from dpokit.run import Run
from dpokit.stopping import EarlyStopping
from dpokit.tracking import MarginLog, memory_row, progress_postfix

if TYPE_CHECKING:
    from dpokit.config import Config


class Watch:
    """The observers of one run; built by `train.setup`, fed by `train.fit`."""

    def __init__(self, config: Config, is_main: bool, diagnostics: Diagnostics | None, peak: Peak | None) -> None:
        self.diagnostics = diagnostics
        self.peak = peak
        self.stopper = EarlyStopping.from_config(config.train)
        self.divergence = Divergence(mode=config.train.on_divergence)
        self.mirror = Mirror(config.output.mirror_dir) if config.output.mirror_dir and is_main else None
        self.margins: MarginLog | None = None
        self.window_start = time.perf_counter()
        self.window_tokens = 0
        self.window_steps = 0
        self.window_flops = 0.0

    def start(self, run: Run, resumed: bool) -> None:
        """Open the margin logs (a task with pairs) and start the first logging window."""
        if run.task.unit == "pairs":
            self.margins = MarginLog(run.out_dir, run.config.output.save_margin_arrays, append=resumed,
                                     is_main=run.info.is_main)
        self.new_window(run)

    def new_window(self, run: Run) -> None:
        run.window = run.task.metrics()
        self.window_start, self.window_tokens = time.perf_counter(), run.state.tokens_seen
        self.window_steps, self.window_flops = 0, 0.0

    def step_done(self, flops: float) -> None:
        """One optimizer step of this rank, with its useful FLOPs (`Task.flops`)."""
        self.window_steps += 1
        self.window_flops += flops

    def train_row(self, run: Run, grad_norm: float) -> dict[str, Any]:
        """The logged row of the window that ends at this step (collectives: every rank calls it)."""
        n = run.state.step
        totals = dist.all_reduce_sum(torch.tensor([float(run.state.tokens_seen - self.window_tokens),
                                                   self.window_flops], dtype=torch.float64))
        seconds = time.perf_counter() - self.window_start
        row = {"step": n, **run.window.means(), "grad_norm": grad_norm,
               "learning_rate": run.optimizer.param_groups[0]["lr"], "epoch": round(run.stream.epochs_done(), 4),
               "num_tokens": run.state.tokens_seen,
               **throughput_row(int(totals[0]), self.window_steps, seconds, float(totals[1]),
                                self.peak.flops if self.peak else None, run.info.world_size),
               **run.task.row_extras(n), **memory_row(run.device)}
        return row

    def logged(self, run: Run, row: dict[str, Any], progress: Any) -> None:
        """After a training row is logged: margin logs, progress postfix, diagnostics, a new window."""
        if self.margins is not None:  # every rank: it gathers the ranks' margins
            self.margins.log(row["step"], row["epoch"], torch.tensor(run.window.margins(), dtype=torch.float32))
        progress.set_postfix(progress_postfix(row), refresh=False)
        if self.diagnostics is not None:
            self.diagnostics.observe(row)
        self.new_window(run)
        self.divergence.observe(row, run.out_dir, run.log.print)  # before this step's checkpoint is saved

    def before_final(self, run: Run) -> None:
        """A run that ends out of bounds stops here, before its ``final/`` (``divergence.py``), unless
        ``final/`` is the best checkpoint, saved while healthy (``load_best_model_at_end``)."""
        best = self.stopper.best_step
        if (run.config.train.load_best_model_at_end and best is not None and best <= self.divergence.last_good_step
                and self.best_checkpoint(run.out_dir) is not None):
            return
        self.divergence.at_end(run.out_dir, run.log.print)

    def evaluated(self, row: dict[str, Any]) -> bool:
        """Take an evaluation row; True when it is the best so far (by ``metric_for_best_model``)."""
        return self.stopper.update(row["step"], row)

    def best_checkpoint(self, out_dir: Path) -> Path | None:
        step = self.stopper.best_step
        path = out_dir / f"checkpoint-{step}"
        return path if step is not None and path.is_dir() else None

    def saved(self, path: Path, removed: list[Path]) -> None:
        """A checkpoint was written (and the rotation removed ``removed``): mirror it."""
        if self.mirror is not None:
            self.mirror.checkpoint(path)
            for old in removed:
                self.mirror.remove(old.name)

    def finish(self, run: Run, final: Path) -> None:
        """The run is done (main process): a model card in ``final/`` (preference runs), then the final
        model and the logs copied to the mirror."""
        if self.margins is not None:
            self.margins.close()
        best = self.best_checkpoint(run.out_dir)
        if best is not None and not run.config.train.load_best_model_at_end:  # else `load_best` names it
            run.log.print(f"best checkpoint: {best} ({self.stopper.metric} {self.stopper.best_value:.6g} at step "
                          f"{self.stopper.best_step})")
        if run.task.unit == "pairs":
            try:
                write_model_card(final, run.config, len(run.task.train), len(run.task.eval), run.out_dir,
                                 reference=run.task.describe(), best_step=self.final_step(run, best))
            except (OSError, DpokitError) as e:  # the model itself is saved; say what is missing
                run.log.print(f"warning: no model card in {final}: {e}")
        if self.mirror is not None:
            self.mirror.final(final)
            self.mirror.logs(run.out_dir)

    def final_step(self, run: Run, best: Path | None) -> int | None:
        """The step whose weights ``final/`` holds when ``load_best_model_at_end`` made it the best
        evaluation's (its checkpoint was loaded, or the last step was the best); else None."""
        step = self.stopper.best_step
        if not run.config.train.load_best_model_at_end or step is None:
            return None
        return step if best is not None or step == run.state.step else None

    def close(self) -> None:
        if self.margins is not None:
            self.margins.close()

    def state_dict(self) -> dict[str, Any]:
        diagnostics = self.diagnostics
        return {"stopper": self.stopper.state_dict(), "divergence": self.divergence.state_dict(),
                "diagnostics": None if diagnostics is None else {"rows": diagnostics.rows,
                                                                 "fired": sorted(diagnostics.fired)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopper.load_state_dict(state.get("stopper") or {})
        self.divergence.load_state_dict(state.get("divergence") or {})
        if self.diagnostics is not None and state.get("diagnostics"):
            self.diagnostics.rows = list(state["diagnostics"]["rows"])
            self.diagnostics.fired = set(state["diagnostics"]["fired"])
