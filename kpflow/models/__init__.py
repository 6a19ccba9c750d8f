"""Built-in models with analytic derivatives, and the model interface.

Every model follows the contract of :mod:`kpflow.models.base`: ``init`` gives
PyTorch-named parameters, ``run`` gives a :class:`Trajectory` holding the
states z, the per-step Jacobians J_t (as actions) and the weight sites
(A_w, D_w) from which ``kpflow.ntk`` builds K, P and NTK_S = P K Pᵀ.
"""

from kpflow.models.attention import SelfAttention
from kpflow.models.base import (
    Model,
    NonFiniteStatesError,
    RecurrentModel,
    RecurrentTrajectory,
    Site,
    StepKernel,
    Trajectory,
)
from kpflow.models.feedforward import FeedForward
from kpflow.models.gru import GRU
from kpflow.models.hooks import Recurrent, StepDerivatives
from kpflow.models.implicit import Implicit, SolverNotConvergedError
from kpflow.models.layout import Layout
from kpflow.models.leaky import LeakyRNN
from kpflow.models.linear import Linear
from kpflow.models.lstm import LSTM
from kpflow.models.mlp import MLP
from kpflow.models.rnn import RNN
from kpflow.models.transformer import TransformerEncoder

__all__ = [
    "GRU",
    "LSTM",
    "MLP",
    "RNN",
    "FeedForward",
    "Implicit",
    "Layout",
    "LeakyRNN",
    "Linear",
    "Model",
    "NonFiniteStatesError",
    "Recurrent",
    "RecurrentModel",
    "RecurrentTrajectory",
    "SelfAttention",
    "Site",
    "SolverNotConvergedError",
    "StepDerivatives",
    "StepKernel",
    "Trajectory",
    "TransformerEncoder",
]
