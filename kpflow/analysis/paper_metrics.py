"""The paper's metrics: core and target alignment, target modes, variance ranks.

Notation (docs/theory.md): NTK_S = P K Pᵀ on states ``(B, T, S)`` with axes
``("batch", "time", "hidden")``.  The *temporal NTK* is the true partial trace over the
hidden axis, ``M[(b,t),(b',t')] = Σ_h NTK_S[(b,t,h),(b',t',h)]`` (keeping batch and time);
the *spatial NTK* keeps hidden.

- :func:`core_alignment`: the self-referential bias, the cosine ⟨M, V Vᵀ⟩_F / (‖M‖_F ‖V Vᵀ‖_F)
  between the temporal NTK and the joint activity Gram of V = [h_{t−1}, x_t] over
  ``(batch, time)``.  Both are PSD, so it lies in ``[0, 1]``.
- :func:`target_alignment`: ρ(M, y) / tr(NTK_S), ρ(A, y) = yᵀ A y / yᵀ y, in ``[0, 1]``.
- :func:`target_modes`: the SVD of the targets, Y = U Σ Wᵀ over ``(batch·time, out)``, and
  τ_i = ‖u_iᵀ Ŷ‖ / σ_i of an output Ŷ (the fraction of target mode i it reproduces).
- :func:`target_mode_rayleigh`: the Rayleigh quotient of NTK_S on a target mode read back
  into state space through the readout, normalised by ‖NTK_S‖₂.
- :func:`rank_at_variance`: how many eigenmodes of an operator (or of a partial trace)
  reach a fraction of its trace.
- :func:`temporal_spatial_ranks`: participation ratios of NTK_S (or K, P Pᵀ) keeping
  ``(batch, time)``, keeping hidden, and globally.

Where the research code (meeree/kpflow) defines these differently (its effective rank of
K is pr(K²), and its "partial trace" sums every block) docs/analysis.md works an example.

This module gathers them; they live by responsibility in ``paper_metrics_temporal`` (the
temporal NTK), ``paper_metrics_alignment`` (core and target alignment),
``paper_metrics_targets`` (target modes) and ``paper_metrics_ranks`` (rank summaries).
"""

from kpflow.analysis.paper_metrics_alignment import core_alignment, target_alignment
from kpflow.analysis.paper_metrics_ranks import (
    TemporalSpatialRanks,
    VarianceRank,
    rank_at_variance,
    temporal_spatial_ranks,
)
from kpflow.analysis.paper_metrics_targets import TargetModes, target_mode_rayleigh, target_modes
from kpflow.analysis.paper_metrics_temporal import temporal_ntk

__all__ = [
    "TargetModes",
    "TemporalSpatialRanks",
    "VarianceRank",
    "core_alignment",
    "rank_at_variance",
    "target_alignment",
    "target_mode_rayleigh",
    "target_modes",
    "temporal_ntk",
    "temporal_spatial_ranks",
]
