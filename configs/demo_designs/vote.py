def forward(task):
    solvers = [Agent(f"solver{i}", system="Give only the final result, written as \\boxed{number}.") for i in range(3)]
    return final_answer(ensemble(solvers, task, aggregate="vote"))
