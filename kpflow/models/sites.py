"""Weight sites: the pre-activation groups u_w(s) = W_w a_w(s) + b_w of a trajectory.

A :class:`Site` holds the site variables A_w (one row per site, bias columns of ones
included), the action of D_w = ∂f/∂u_w and the parameter rows of its block C_w, from which
the parameter kernel is K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ (docs/theory.md, "The Kronecker core
of K").  This module gathers

- :mod:`kpflow.models.sites_base`: :class:`Site` (per-unit or scaled D), its pure actions;
- :mod:`kpflow.models.sites_linear`: :class:`LinearSite` (a general linear D);
- :mod:`kpflow.models.sites_table`: the site declarations (:class:`SiteDecl`) and rows.
"""

from __future__ import annotations

from kpflow.models.sites_base import (
    Site,
    SiteSpec,
    apply_D_block,
    apply_DT,
    embed_columns,
    flat_sites,
    site_variables,
)
from kpflow.models.sites_linear import (
    LinearSite,
    LinearSiteSpec,
    apply_linear_D,
    apply_linear_DT,
    apply_site_D,
    apply_site_DT,
)
from kpflow.models.sites_table import NO_SITE, SiteDecl, SiteRows, Term

__all__ = [
    "NO_SITE",
    "LinearSite",
    "LinearSiteSpec",
    "Site",
    "SiteDecl",
    "SiteRows",
    "SiteSpec",
    "Term",
    "apply_DT",
    "apply_D_block",
    "apply_linear_D",
    "apply_linear_DT",
    "apply_site_D",
    "apply_site_DT",
    "embed_columns",
    "flat_sites",
    "site_variables",
]
