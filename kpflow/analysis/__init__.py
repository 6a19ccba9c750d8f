"""Science workflows built on kpflow's operators and linear algebra.

- :func:`spectrum_report`: top eigenvalues, traces and effective ranks (globally and
  along every axis) of K and NTK_S for one trajectory; what ``kpflow spectrum`` prints.
- :func:`ntk_modes`: top-k modes of NTK_S, K (eigen) or P (singular), with their
  (batch, time) and hidden energy profiles (:func:`profiles`).
- :func:`effective_ranks`, :func:`effective_ranks_over_training`: participation ratios of
  K, P Pᵀ and NTK_S, globally and along each axis, at one trajectory or over checkpoints.
- :func:`kernel_alignment` (centred or not), :func:`misdirection` (NTK_S against P Pᵀ),
  :func:`init_vs_trained_alignment`.
- :func:`learnability`, :func:`predicted_loss_decrease`: the output NTK against a task's
  targets and error; the first-order loss change of one gradient step against the actual one.
- :func:`self_referential_bias`: how closely K's dominant site modes follow the principal
  components of the site variables.
- :func:`finite_time_lyapunov_exponents` (from the singular values of the Jacobian product),
  :func:`lyapunov_exponents` (the QR iteration from a fixed frame),
  :func:`propagator_singular_values`: the recurrence's dynamics.
- :func:`differentiable_effective_rank`: the exact participation ratio of K as a function
  that autodiff (torch, jax) can differentiate.
- The paper's metrics: :func:`core_alignment` (the self-referential bias as the cosine of
  the temporal NTK with V Vᵀ), :func:`target_alignment`, :func:`target_modes` (τ_i),
  :func:`target_mode_rayleigh`, :func:`rank_at_variance`, :func:`temporal_spatial_ranks`,
  on the temporal NTK :func:`temporal_ntk`.
- :func:`site_terms` (:class:`SiteTerm`): each weight site's term K_w of K, exactly: trace,
  effective rank, rank, and the rank bound rank(G_w)·k_w.
- :func:`g_sweep`, :func:`dimension_sweep` (:class:`Sweep`): the NTK at initialisation
  against the recurrent scale g; the trained NTK against a task's dimensionality.
- :func:`run_demo` (:class:`DemoConfig`): what ``kpflow demo`` runs: train a small network on
  a task, then the spectra and effective ranks of K and NTK_S before and after training.
"""

from kpflow.analysis.alignment import init_vs_trained_alignment, kernel_alignment, misdirection
from kpflow.analysis.demo import DemoConfig, run_demo
from kpflow.analysis.dynamics import (
    finite_time_lyapunov_exponents,
    lyapunov_exponents,
    propagator_singular_values,
)
from kpflow.analysis.learnability import Learnability, LossChange, learnability, predicted_loss_decrease
from kpflow.analysis.modes import Modes, ntk_modes, profiles
from kpflow.analysis.paper_metrics import (
    TargetModes,
    TemporalSpatialRanks,
    VarianceRank,
    core_alignment,
    rank_at_variance,
    target_alignment,
    target_mode_rayleigh,
    target_modes,
    temporal_ntk,
    temporal_spatial_ranks,
)
from kpflow.analysis.ranks import (
    EffectiveRanks,
    RanksOverTraining,
    effective_ranks,
    effective_ranks_over_training,
)
from kpflow.analysis.sites import SelfReferentialBias, differentiable_effective_rank, self_referential_bias
from kpflow.analysis.spectrum import axis_names, spectrum_report
from kpflow.analysis.sweeps import Sweep, dimension_sweep, g_sweep
from kpflow.analysis.terms import SiteTerm, site_terms

__all__ = [
    "DemoConfig",
    "EffectiveRanks",
    "Learnability",
    "LossChange",
    "Modes",
    "RanksOverTraining",
    "SelfReferentialBias",
    "SiteTerm",
    "Sweep",
    "TargetModes",
    "TemporalSpatialRanks",
    "VarianceRank",
    "axis_names",
    "core_alignment",
    "differentiable_effective_rank",
    "dimension_sweep",
    "effective_ranks",
    "effective_ranks_over_training",
    "finite_time_lyapunov_exponents",
    "g_sweep",
    "init_vs_trained_alignment",
    "kernel_alignment",
    "learnability",
    "lyapunov_exponents",
    "misdirection",
    "ntk_modes",
    "predicted_loss_decrease",
    "profiles",
    "propagator_singular_values",
    "rank_at_variance",
    "run_demo",
    "self_referential_bias",
    "site_terms",
    "spectrum_report",
    "target_alignment",
    "target_mode_rayleigh",
    "target_modes",
    "temporal_ntk",
    "temporal_spatial_ranks",
]
