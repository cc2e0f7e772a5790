"""One optimizer step of manual optimization, with Lightning's hooks, at this network's speed.

`manual_backward` + `LightningOptimizer.step` run each step through the strategy, the precision
plugin, a closure and the profiler, and call every callback for three hooks whether it
implements them or not. For the lesson's network on a CPU that dispatch is about a fifth of a
step (`make bench`). Where it adds nothing - full precision, one device, no profiler, no hook
overridden in the module - `DirectStep` calls the same hooks on only the callbacks that
implement them and steps the torch optimizer itself. Anything else (mixed precision, DDP, a
profiler, a module hook) takes Lightning's own path, unchanged.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

# The hooks Lightning calls around one manual optimization step, in its order.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class DirectStep:
    """Backward and optimizer step for `module`, built once per fit (`for_trainer`)."""

    def __init__(self, module: pl.LightningModule, listeners: dict[str, list] | None) -> None:
        self.module = module
        self.listeners = listeners  # None: Lightning's own path

    @classmethod
    def for_trainer(cls, trainer: pl.Trainer, module: pl.LightningModule) -> DirectStep:
        plain = (
            type(trainer.precision_plugin) is Precision  # "32-true": no scaling or casting
            and type(trainer.strategy) is SingleDeviceStrategy  # no gradient sync
            and isinstance(trainer.profiler, PassThroughProfiler)  # nobody times the hooks
            and not any(
                is_overridden(hook, module, pl.LightningModule)
                for hook in (*STEP_HOOKS, "backward")
            )
        )
        if not plain:
            return cls(module, None)
        listeners = {
            hook: [c for c in trainer.callbacks if is_overridden(hook, c, pl.Callback)]
            for hook in STEP_HOOKS
        }
        return cls(module, listeners)

    @property
    def direct(self) -> bool:
        return self.listeners is not None

    def __call__(self, loss: torch.Tensor, optimizer: LightningOptimizer) -> None:
        module = self.module
        if self.listeners is None:
            module.manual_backward(loss)
            optimizer.step()
            return
        self._notify("on_before_backward", loss)
        loss.backward()
        self._notify("on_after_backward")
        # What LightningOptimizer.step does around the step: the manual loop hooks these two
        # to count optimizer steps (trainer.global_step). Callbacks see the step not yet
        # counted, as on Lightning's path.
        optimizer._on_before_step()
        self._notify("on_before_optimizer_step", optimizer)
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def _notify(self, hook: str, *args) -> None:
        callbacks = self.listeners[hook]
        if not callbacks:
            return
        # As Lightning does: self.log inside the hook is checked and named for this hook.
        module = self.module
        previous, module._current_fx_name = module._current_fx_name, hook
        try:
            for callback in callbacks:
                getattr(callback, hook)(module.trainer, module, *args)
        finally:
            module._current_fx_name = previous
