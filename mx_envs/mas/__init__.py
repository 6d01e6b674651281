"""MAS script runtime: the library a design is written against and the host that runs it.

- :mod:`mx_envs.mas.lib` — what a script imports as ``mas`` (``Agent``, ``pipeline``, ``ensemble``,
  ``reflect``, ``debate``, ``route``, answer extraction); runs inside the sandbox.
- :mod:`mx_envs.mas.runner` — the sandboxed child's entry point (message protocol to the host).
- :mod:`mx_envs.mas.session` — :class:`~mx_envs.mas.session.MASSession`, the resumable host side.
- :mod:`mx_envs.mas.script` — finding and checking the script in a designer's text.
- :mod:`mx_envs.mas.protocol` — the typed host<->script messages (both sides import it) and the
  request / result / budget types.
- :mod:`mx_envs.mas.designs` — the library designs (``load_design(name)``);
  :mod:`mx_envs.mas.reference` — ``api_reference(budgets)``, the designer-facing ``API.md``.

Importing this package imports none of them (kept cheap for the sandbox's preload).
"""
