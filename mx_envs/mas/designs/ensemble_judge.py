"""Ensemble + judge: solvers with different approaches, a judge compares them and answers."""

from mas import Agent, ensemble, final_answer

FORMAT = (
    "If the task asks for a program, give the complete program in one ```python block. "
    "Otherwise end with the final answer in \\boxed{}."
)
STYLES = {
    "direct": "Solve the task directly and carefully.",
    "stepwise": "Break the task into small steps and verify each one.",
    "checker": "Solve the task, then check the answer against the task's conditions and edge cases.",
}


def forward(task):
    solvers = [Agent(f"solver_{k}", system=f"{v} {FORMAT}") for k, v in STYLES.items()]
    judge = Agent("judge", system="You compare candidate solutions and give the correct one. " + FORMAT)
    return final_answer(ensemble(solvers, task, aggregate=judge))
