"""`python -m bench`: run every benchmark, print the figures, write bench/results.json.

`python -m bench.reactive` and `python -m bench.sessions` run one of them.
"""

from bench import reactive, sessions
from bench.common import write_results

if __name__ == "__main__":
    figures = reactive.run(50)
    write_results("reactive", figures)
    reactive.print_table(figures)
    figures = sessions.run(20)
    write_results("sessions", figures)
    sessions.print_table(figures)
