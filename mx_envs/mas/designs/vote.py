"""Self-consistency: several independent solvers, majority vote over their final answers."""

from mas import Agent, ensemble, final_answer

FORMAT = (
    "If the task asks for a program, give the complete program in one ```python block. "
    "Otherwise end with the final answer in \\boxed{}."
)
N_SOLVERS = 5


def forward(task):
    solvers = [
        Agent(f"solver{i + 1}", system="Solve the task step by step. " + FORMAT, temperature=0.8)
        for i in range(N_SOLVERS)
    ]
    return final_answer(ensemble(solvers, task, aggregate="vote"))
