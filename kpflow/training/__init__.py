"""Training: the masked MSE through a linear readout, exact gradients, optimizers, initialisations.

- :func:`loss_and_gradients`: the loss and its gradients, by kpflow's own backpropagation
  through time (θ-gradients = Fᵀ Pᵀ ∇_z L through the sites, on every backend) or by the
  framework's autodiff (torch, jax); the two agree to rounding;
- :func:`train`: full-batch, minibatch or online (a task's fresh batches) training, with
  checkpoints at chosen steps;
- :class:`SGD` (with momentum) and :class:`Adam`: pure array-API optimizers on dicts;
- :func:`init_params`: a recurrent-weight scale g (Gaussian, or torch's uniform times g as
  in the research code) and chosen fixed points embedded in W_hh;
- :func:`save_checkpoint`, :func:`load_checkpoint` (``.npz`` with parameter names) and
  :func:`load_state_dict` (a torch ``state_dict``): loading never executes code from a file
  and names every missing, extra, misshapen or non-finite entry.

Examples
--------
>>> import numpy as np
>>> from kpflow.models import GRU, Linear
>>> from kpflow.tasks import FlipFlop
>>> from kpflow.training import SGD, init_params, train
>>> model, readout = GRU(3, 8), Linear(8, 3)
>>> batch = FlipFlop(T=10).sample(4, rng=0)
>>> r = train(model, readout, init_params(model, 0, g=0.9), readout.init(1), batch,
...           steps=3, optimizer=SGD(0.1, momentum=0.9), checkpoints=[0, 3], method="kpflow")
>>> r.losses.shape, [c.step for c in r.checkpoints]
((3,), [0, 3])
"""

from kpflow.training.checkpoints import CheckpointError, load_checkpoint, load_state_dict, save_checkpoint
from kpflow.training.init import init_params
from kpflow.training.loop import Checkpoint, TrainingDiverged, TrainResult, train
from kpflow.training.loss import LossAndGradients, loss_and_gradients, masked_mse
from kpflow.training.optim import SGD, Adam

__all__ = [
    "SGD",
    "Adam",
    "Checkpoint",
    "CheckpointError",
    "LossAndGradients",
    "TrainResult",
    "TrainingDiverged",
    "init_params",
    "load_checkpoint",
    "load_state_dict",
    "loss_and_gradients",
    "masked_mse",
    "save_checkpoint",
    "train",
]
