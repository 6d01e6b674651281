"""Policies: batched ``act(observations) -> actions`` for designers, executors and baselines."""

from mx_agents.policies.base import LLMRolePolicy, Policy, RoutedPolicy, generate_actions
from mx_agents.policies.design_prompt import DesignerPrompt, extract_script, library_design_source
from mx_agents.policies.executor import PolicyExecutor, make_executor
from mx_agents.policies.fixed import FixedDesigner, FixedDesignPolicy
from mx_agents.policies.llm import DesignerPolicy, ExecutorPolicy, SharedPolicy, SplitPolicy
from mx_agents.policies.random_policy import RandomPolicy
from mx_agents.policies.scripted import ScriptedPolicy, builtin_scripted_policy
from mx_agents.policies.spec import parse_policy_spec, resolve_model_path

__all__ = [
    "DesignerPolicy",
    "DesignerPrompt",
    "ExecutorPolicy",
    "FixedDesignPolicy",
    "FixedDesigner",
    "LLMRolePolicy",
    "Policy",
    "PolicyExecutor",
    "RandomPolicy",
    "RoutedPolicy",
    "ScriptedPolicy",
    "SharedPolicy",
    "SplitPolicy",
    "builtin_scripted_policy",
    "extract_script",
    "generate_actions",
    "library_design_source",
    "make_executor",
    "parse_policy_spec",
    "resolve_model_path",
]
