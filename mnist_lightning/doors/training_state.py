"""The checkpoint door's last part: the training state a resume takes from a checkpoint (the
optimizer's, the schedule's, the data order's and random generators'), checked before Lightning
restores any of it. The checkpoint itself is read and checked by doors/checkpoints.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from mnist_lightning.data.order import check_data_state
from mnist_lightning.errors import CheckpointError, first_line
from mnist_lightning.models.optim import build_optimizer


def check_resumable(
    model: torch.nn.Module, datamodule: object, path: Path, checkpoint: dict
) -> None:
    """Refuse, in one line, a checkpoint whose optimizer, schedule or data state does not fit the
    run's: it is loaded into a scratch copy of the optimizer, which then takes a step (a state of
    the wrong shape fails only there), a schedule's state must be names and numbers, and the
    data's state (order, random generators) must be one the DataModule takes."""
    scratch = copy.deepcopy(model.net)
    for parameter in scratch.parameters():
        parameter.grad = torch.zeros_like(parameter)
    try:
        states = checkpoint["optimizer_states"]
        if len(states) != 1:
            raise ValueError(f"{len(states)} optimizer states; the run has one optimizer")
        _check_optimizer_state(states[0], list(scratch.parameters()))
        optimizer = build_optimizer(scratch.parameters(), model.hparams.optimizer)
        optimizer.load_state_dict(copy.deepcopy(states[0]))
        optimizer.step()
        schedules = checkpoint["lr_schedulers"]
        if len(schedules) != (1 if model.hparams.scheduler else 0):
            raise ValueError(
                f"{len(schedules)} schedules; the run has {'one' if model.hparams.scheduler else 'none'}"
            )
        if not all(_numbers_and_names(state) for state in schedules):
            raise ValueError("a schedule's state holds more than names and numbers")
        data_key = type(datamodule).__qualname__  # where Lightning keeps a DataModule's state
        if data_key in checkpoint:  # (earlier checkpoints resume, inexactly)
            fit_loop = checkpoint["loops"].get("fit_loop", {}).get("state_dict", {})
            check_data_state(checkpoint[data_key], fit_loop.get("combined_loader", []))
    except Exception as error:  # noqa: BLE001 - whatever a damaged state makes fail
        raise CheckpointError(
            f"{path}: its optimizer or data state does not fit this run ({type(error).__name__}: "
            f"{first_line(error)[:200]}); resume from another checkpoint of the run, or start a "
            "new run."
        ) from None


def _check_optimizer_state(saved: dict[str, Any], parameters: list[torch.Tensor]) -> None:
    """Each parameter's state holds tensors of its shape and kind (the step counter aside): the
    fused kernels of torch's optimizers read past a tensor of another shape, and would crash the
    process rather than raise."""
    state = saved.get("state")
    if not isinstance(state, dict) or not isinstance(saved.get("param_groups"), list):
        raise ValueError("no state and param_groups")
    for index, kept in state.items():
        if not (isinstance(index, int) and 0 <= index < len(parameters) and isinstance(kept, dict)):
            raise ValueError(f"state {index!r} is not a parameter's")
        parameter = parameters[index]
        for name, value in kept.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if value.shape != parameter.shape or value.dtype != parameter.dtype:
                    raise ValueError(f"state {index}.{name} is not {tuple(parameter.shape)}")
            elif isinstance(value, torch.Tensor) and not value.is_floating_point():
                raise ValueError(f"state {index}.{name} is not a floating-point number")
            elif not (value is None or isinstance(value, torch.Tensor | bool | int | float)):
                raise ValueError(f"state {index}.{name} is not a tensor or a number")


def _numbers_and_names(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _numbers_and_names(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_numbers_and_names(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return value is None or isinstance(value, bool | int | float | str)
