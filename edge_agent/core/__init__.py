"""The agent's parts, each owning its own state; `edge_agent.agent.Agent` wires them and runs the loop.

- retry.py        one backoff value type and the schedule every retry uses
- publisher.py    results, events, stats, answers, config state, overflow and storage notices
- status.py       the status computed in one place from the parts' states
- sources.py      the source supervisor: open with backoff, stall detection, drop and reopen
- lease.py        a frame on a lease, released exactly once
- lane.py         the inference lane: inline and overlapped strategies behind one interface
- models.py       the model supervisor: the only place that builds a pipeline, off the loop
- config.py       the config controller: SIGHUP, cmd/reload and remote updates, probation
- commands.py     the command handler: a dispatch table
- watchdog.py     when systemd's watchdog is pinged
"""
