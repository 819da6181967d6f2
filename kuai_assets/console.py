"""The console a run prints to: Dagster's format, with two kinds of noise kept out.

It is every job's `console` logger (kuai_assets/definitions.py). Dagster starts a job's loggers
only when the run config names them: `kuai run` always does (its `--log-level`); a run started
without (`dagster asset materialize`, the UI's Materialize) prints through Dagster's own console,
unless its config says `loggers: {console: {config: {log_level: INFO}}}`.

- Dagster logs "Dependencies for step X failed ... Not executing." at ERROR for every step
  downstream of a failure; the failure itself says everything. Those lines are demoted to DEBUG,
  then the threshold applies.
- A step or run failure whose error is a `dagster.Failure` (the platform raises one with the whole
  story in its description: the file, the line, what to do) is printed without the stack of
  Dagster's own frames that follows it; so is an interruption (Ctrl-C: Dagster raises
  DagsterExecutionInterruptedError wherever the step happened to be, and its stack says nothing).
  Any other error keeps its stack.
"""

from __future__ import annotations

import logging
import sys

import dagster as dg

# how Dagster's failure events print a Failure, and where the stack that follows it begins
FAILURE_PREFIX = "dagster._core.definitions.events.Failure: "
INTERRUPTION = "DagsterExecutionInterruptedError"
STACK_TRACE = "\n\nStack Trace:\n"
FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class QuietFailures(logging.Filter):
    """The module docstring's two rules, then the threshold."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        head, stack, _ = message.partition(STACK_TRACE)
        if "Dependencies for step" in message and "Not executing." in message:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif stack and (FAILURE_PREFIX in message or INTERRUPTION in head):
            record.msg, record.args = head.rstrip(), ()
        return record.levelno >= self.threshold


@dg.logger(
    config_schema={"log_level": dg.Field(str, default_value="INFO", description="The logger's threshold.")},
    description="The console: Dagster's format; the skipped-step cascade at DEBUG; a Failure without Dagster's stack.",
)
def console_logger(init_context) -> logging.Logger:
    level = init_context.logger_config["log_level"].upper()
    threshold = logging.getLevelName(level)
    if not isinstance(threshold, int):
        raise ValueError(f"log_level {level!r} is not a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    logger = logging.Logger("dagster", logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(QuietFailures(threshold))
    logger.addHandler(handler)
    return logger
