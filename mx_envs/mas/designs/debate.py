"""Debate: three debaters answer, then revise after reading each other; a judge decides."""

from mas import Agent, debate, final_answer

FORMAT = (
    "If the task asks for a program, give the complete program in one ```python block. "
    "Otherwise end with the final answer in \\boxed{}."
)


def forward(task):
    debaters = [
        Agent(f"debater{i + 1}", system="You debate to find the correct solution. Think step by step. " + FORMAT)
        for i in range(3)
    ]
    judge = Agent("judge", system="You judge a debate and give the correct final answer. " + FORMAT)
    return final_answer(debate(debaters, judge, task, rounds=2))
