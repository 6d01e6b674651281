"""Reflection: a solver answers, a critic checks it; revise until APPROVED or 2 rounds."""

from mas import Agent, final_answer, reflect

FORMAT = (
    "If the task asks for a program, give the complete program in one ```python block. "
    "Otherwise end with the final answer in \\boxed{}."
)


def forward(task):
    solver = Agent("solver", system="You are an expert problem solver. Think step by step. " + FORMAT)
    critic = Agent(
        "critic",
        system="You are a strict reviewer. Check each step and the final answer. "
        "Reply APPROVED only if the solution is fully correct; otherwise list the errors.",
    )
    return final_answer(reflect(solver, critic, task, rounds=2))
