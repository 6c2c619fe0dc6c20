"""Policies: claims to roles, roles to models, limits and guard, cache and audit settings.

``store`` loads and hot-reloads a directory of YAML files, ``rbac`` decides each request; see
policies/README.md for the file format and how several roles combine.
"""

from __future__ import annotations

from gateway.policy.rbac import Decision, EffectiveSettings, RequestFacts, decide, visible_models
from gateway.policy.schema import PolicyDocument, PolicyFile
from gateway.policy.store import LoadedPolicy, PolicyError, PolicyStore, load_policy_dir

__all__ = [
    "Decision",
    "EffectiveSettings",
    "LoadedPolicy",
    "PolicyDocument",
    "PolicyError",
    "PolicyFile",
    "PolicyStore",
    "RequestFacts",
    "decide",
    "load_policy_dir",
    "visible_models",
]
