"""Shared components of the TPP bundles: PEFT injection, pretext tasks, engines and handlers.

Bundle configs reference these by their full dotted path, e.g.
``"_target_": "tpp_components.networks.build_network"``.
"""

__version__ = "0.1.0"

from tpp_components import data, engines, handlers, inferers, networks, peft, pretext  # noqa: E402,F401
