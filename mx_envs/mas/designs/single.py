"""Single agent: one solver answers directly (the baseline every other design must beat)."""

from mas import Agent, final_answer

FORMAT = (
    "If the task asks for a program, give the complete program in one ```python block. "
    "Otherwise end with the final answer in \\boxed{}."
)


def forward(task):
    solver = Agent("solver", system="You are an expert problem solver. Think step by step. " + FORMAT)
    return final_answer(solver(task))
