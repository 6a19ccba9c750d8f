"""Checks shared by the ``from_module`` mappings of torch modules (recurrent, attention, cells).

:mod:`kpflow.backends._torch_modules` and :mod:`kpflow.backends._torch_cells` both map a
module's own tensors onto a kpflow model; both refuse tensors of mixed dtype or device and
freeze the parameters with ``requires_grad=False``, with the same messages.  They live here,
below both (``_torch_modules`` hands recurrent cells to ``_torch_cells``, so neither may
import the other's).
"""

from __future__ import annotations

from typing import Any

__all__ = ["_frozen", "_same_meta", "_with_frozen"]


def _same_meta(tensors: dict[str, Any], reference: Any, what: str, where: str) -> None:
    """Refuse a tensor of ``tensors`` whose dtype or device differs from ``reference``'s.

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_modules_checks import _same_meta
    >>> _same_meta({"w": torch.zeros(2)}, torch.zeros(1, dtype=torch.float64), "the weight", "f")
    Traceback (most recent call last):
    ...
    TypeError: f: the weight 'w' is torch.float32 on cpu, but the recurrent module's weights are ...
    """
    for name, tensor in tensors.items():
        if tensor.dtype != reference.dtype or tensor.device != reference.device:
            msg = (
                f"{where}: {what} {name!r} is {tensor.dtype} on {tensor.device}, but the recurrent "
                f"module's weights are {reference.dtype} on {reference.device}; convert both alike "
                "(e.g. module.double(), readout.double())"
            )
            raise TypeError(msg)


def _frozen(named: list[tuple[str, Any]]) -> list[str]:
    """The names of the parameters with ``requires_grad=False`` (gradient descent leaves them fixed).

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_modules_checks import _frozen
    >>> _frozen([("a", torch.zeros(1, requires_grad=True)), ("b", torch.zeros(1))])
    ['b']
    """
    return [name for name, p in named if not p.requires_grad]


def _with_frozen(model: Any, named: list[tuple[str, Any]], module: Any, where: str) -> Any:
    """``model`` with the parameters of ``named`` that have ``requires_grad=False`` frozen.

    K, J_S and NTK_S are then over the trained parameters alone (``Model.with_frozen``).

    Examples
    --------
    >>> import torch
    >>> from kpflow.models import RNN
    >>> from kpflow.backends._torch_modules_checks import _with_frozen
    >>> cell = torch.nn.RNNCell(2, 3)
    >>> _ = cell.weight_ih.requires_grad_(False)
    >>> sorted(_with_frozen(RNN(2, 3), list(cell.named_parameters()), cell, "f").frozen)
    ['weight_ih']
    """
    frozen = _frozen(named)
    if len(frozen) == len(named):
        msg = (
            f"{where}: every parameter of the {type(module).__name__} has requires_grad=False, so gradient "
            "descent moves none and the NTK is zero; set requires_grad=True on the parameters you train "
            "(detach=True keeps kpflow from recording an autograd graph)"
        )
        raise ValueError(msg)
    return model.with_frozen(frozen) if frozen else model
