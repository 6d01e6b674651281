"""Program-aided solver: the agent writes Python that prints the result, reads the output, boxes it."""

from mas import Agent, final_answer


def forward(task):
    coder = Agent("coder", system="Reply with a ```python block that prints the result. "
                  "After its output, reply with the result in \\boxed{}.", tools=("python",), max_tool_rounds=1)
    return final_answer(coder(task), kind="math")
