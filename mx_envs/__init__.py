"""MetaAgentX environments: tasks, graders, the sandbox, the MAS script runtime and gym envs.

Importing this package is cheap: it registers the env ids with string entry points and imports
nothing heavy (see :mod:`mx_envs.envs.registration`).
"""

__version__ = "0.1.0"
