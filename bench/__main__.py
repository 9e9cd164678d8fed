"""`python -m bench`: run every benchmark in one sitting, print the figures, write bench/results.json.

`python -m bench.reactive`, `.sessions`, `.progress`, `.bridge`, `.local`, `.burst`, `.team`, `.worktrees`,
`.attachments` and `.cluster` run one of them; `python -m bench.readme` then rewrites the README's Performance and
Reliability sections from the results, saying when each figure was measured.
"""

import os

from bench import attachments, bridge, burst, cluster, local, progress, reactive, sessions, team, worktrees
from bench.common import write_results

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for name, module, args in (("reactive", reactive, (50,)), ("sessions", sessions, (20,)),
                               ("progress", progress, (20,)), ("bridge", bridge, (50, 20)), ("local", local, (100,)),
                               ("burst", burst, ()), ("team", team, (20,)), ("worktrees", worktrees, ()),
                               ("attachments", attachments, (20,)), ("cluster", cluster, (25,))):
        figures = module.run(*args)
        write_results(name, figures)
        module.print_table(figures)
