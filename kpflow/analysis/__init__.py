"""Science workflows built on kpflow's operators and linear algebra.

- :func:`spectrum_report`: top eigenvalues, traces and effective ranks (globally and
  along every axis) of K and NTK_S for one trajectory; what ``kpflow spectrum`` prints.
"""

from kpflow.analysis.spectrum import axis_names, spectrum_report

__all__ = ["axis_names", "spectrum_report"]
