"""The research loop, one room per concern (each imports only the rooms below it):

loop.py       Research: the run's state and its turn, a list of named steps (collect
              proposals, poll, decide, dispatch, propose ahead), the limits
proposing.py  proposals made on threads, ahead of demand, validated when collected
decide.py     the decision rules as pure functions: a finished run in, a verdict out
flights.py    the RQ side: enqueue, one batched poll, cancel, live workers, adopting
              a killed orchestrator's jobs
record.py     the results row, the run folder, the branch move under deferred Ctrl-C
publish.py    state, rows and decisions to Redis for other hosts (best effort)
policy.py     Policy and Limits (the knobs), the time budget, the look-ahead
final.py      the final re-measure once the run stopped (frontier and baseline, fresh seeds)
"""

from orchestrator.research.loop import BaselineFailed, Research
from orchestrator.research.policy import Limits, Policy, budget_for, lookahead_for

__all__ = ["BaselineFailed", "Limits", "Policy", "Research", "budget_for", "lookahead_for"]
