"""MetaAgentX environments: tasks, graders, the sandbox, the MAS script runtime and gym envs.

Importing this package registers the env ids with gymnasium through string entry points (see
:mod:`mx_envs.envs.registration`); nothing heavier than gymnasium itself is imported. Processes that
never make envs (sandboxed children importing a submodule) may set ``MX_ENVS_NO_REGISTER=1`` to skip
the gymnasium import.
"""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("MX_ENVS_NO_REGISTER") != "1":
    from mx_envs.envs.registration import register_envs as _register_envs

    _register_envs()
