"""`kuai run` starts no run beside another run of its workspace.

Runs side by side are safe for the storage (every output is replaced atomically, and readers keep
the version they opened; `test_robustness.py` runs two at once), and the UI and the dagster CLI
allow them. `kuai run` does not: it would do the same work twice over on the same tables, and the
AUCs its summary reads (the latest materializations) could come from the other run. Before it
starts a run it looks in the workspace's instance, and a run queued or in progress stops it with
one line naming that run.

A run whose process was killed (SIGKILL, the kernel's out-of-memory killer, a crash of the
machine) stays "started" in the instance for ever, and would hold this check. `kuai run` tags its
runs with its process (host, pid and the process's start time, so that a reused pid is not
mistaken for it); a run so tagged whose process is gone is marked failed, with a message saying
why, before the check, by `kuai run` and `kuai ui` alike. A run started otherwise (the UI,
`dagster asset materialize`) and killed is ended in the UI (Runs, the run, Terminate).
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

PROCESS_TAG = "kuai/process"  # "<host>:<pid>:<start time>" of the `kuai run` that started the run


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux's /proc/<pid>/stat), or None
    where there is no /proc (or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def own_tags() -> dict[str, str]:
    """The tags `kuai run` puts on its runs: this process."""
    pid = os.getpid()
    return {PROCESS_TAG: f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"}


def _process(tags: dict[str, str]) -> tuple[str, int, str] | None:
    """(host, pid, start time) of the `kuai run` that started a run (its PROCESS_TAG, as `own_tags`
    writes it), or None for a run started otherwise."""
    host, _, rest = tags.get(PROCESS_TAG, "").partition(":")
    pid_text, _, started = rest.partition(":")
    return (host, int(pid_text), started) if pid_text.isdigit() else None


def process_gone(tags: dict[str, str]) -> int | None:
    """The pid of the `kuai run` that started a run, if that process is known to be gone (it ran
    on this host, and no process with its pid and start time lives); else None."""
    process = _process(tags)
    if process is None or process[0] != socket.gethostname():
        return None
    _, pid, started = process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        return None  # a live process of another user
    now = _start_time(pid)
    return pid if started and now is not None and now != started else None


def in_progress(instance) -> list:
    """The run records of the instance that are queued or in progress, oldest first."""
    import dagster as dg

    statuses = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING]
    return sorted(instance.get_run_records(filters=dg.RunsFilter(statuses=statuses)), key=lambda r: r.create_timestamp)


def end_abandoned(instance, say=lambda line: None) -> list[str]:
    """Mark failed every run in progress whose `kuai run` process is gone; return their run ids."""
    ended = []
    for record in in_progress(instance):
        pid = process_gone(record.dagster_run.tags)
        if pid is None:
            continue
        run = record.dagster_run
        instance.report_run_failed(run, message=f"the `kuai run` process that ran it (pid {pid}) is gone: it was killed")
        say(f"[kuai] Dagster run {run.run_id} was left in progress by a `kuai run` that was killed (pid {pid}): marked failed")
        ended.append(run.run_id)
    return ended


def describe(record) -> str:
    """'Dagster run <id> (<job>, <status> at HH:MM:SS by <who>)'."""
    run = record.dagster_run
    since = record.start_time or record.create_timestamp.timestamp()
    when = datetime.datetime.fromtimestamp(since).strftime("%H:%M:%S")
    process = _process(run.tags)
    who = f"`kuai run`, pid {process[1]}" if process else "the UI or the dagster CLI"
    return f"Dagster run {run.run_id} ({run.job_name}, {run.status.value.lower()} at {when} by {who})"


def _steps_without(instance, run, done) -> list[str]:
    """The step keys of `run`'s execution plan whose step stats are not `done`, in plan order; []
    for a run with no execution plan recorded."""
    if not run.execution_plan_snapshot_id:
        return []
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    reached = {stats.step_key for stats in instance.get_run_step_stats(run.run_id) if done(stats)}
    return [key for key in plan.step_keys_to_execute if key not in reached]


def steps_not_finished(instance, run, besides: str = "") -> list[str]:
    """The step keys of `run` it has yet to finish (no end in the run's step stats), apart from
    `besides`."""
    return [key for key in _steps_without(instance, run, lambda stats: stats.end_time is not None) if key != besides]


def steps_not_succeeded(instance, run) -> list[str]:
    """The step keys of `run` that did not succeed: failed, skipped, or never reached."""
    return _steps_without(instance, run, lambda stats: getattr(stats.status, "value", None) == "SUCCESS")


def refusal(instance) -> str | None:
    """Why a new run must not start now (a run of the workspace is in progress), or None: the run,
    what it has still to run, and how to stop it (Ctrl-C in its `kuai run`, if it is one's)."""
    running = in_progress(instance)
    if not running:
        return None
    run = running[0].dagster_run
    left = steps_not_finished(instance, run)
    still = (f" (still to run: {', '.join(left)})" if len(left) <= 3
             else f" ({len(left)} steps still to run, {left[0]} next)") if left else ""
    by_kuai_run = _process(run.tags) is not None
    stop = ("stop it with Ctrl-C in that `kuai run` (after its evaluation, that stops only what is left) or in "
            "`kuai ui` (Runs, the run, Terminate)" if by_kuai_run else "stop it in `kuai ui` (Runs, the run, Terminate)")
    return (
        f"run: {describe(running[0])} is in progress in this workspace{still}"
        + (f", and {len(running) - 1} more" if len(running) > 1 else "")
        + "; a second run would redo its work on the same tables, and the summary could show the other's "
        f"results. Wait for it to finish, or {stop}"
    )
