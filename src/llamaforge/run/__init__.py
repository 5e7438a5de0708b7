"""The flow (`llamaforge run FLOW.toml`): one config drives every stage in order, in one run folder, skips what is
done, resumes what a kill interrupted, refuses a changed config for a finished stage, and writes the report.

    from llamaforge.run import load_flow, run_flow
    run_flow(load_flow("demo", ["--run.out=runs/demo"]))

This room may call every other room (data, tokenizer, train, eval, formats, infer); nothing imports it but
`commands/run.py`.
"""

from __future__ import annotations

from llamaforge.run.config import FlowConfig, load_flow
from llamaforge.run.flow import STAGES, Flow, describe


def run_flow(cfg: FlowConfig, until: str = "report", start: str | None = None, progress: bool = True) -> dict:
    """Run the stages of `cfg` up to `until` (inclusive), redoing `start` and what follows; see `run.flow`."""
    return Flow(cfg, progress=progress).run(until=until, start=start)


__all__ = ["FlowConfig", "Flow", "STAGES", "describe", "load_flow", "run_flow"]
