"""Feature groups written in Python: one module per group, found by discovery, never listed.

A module here defines one module-level `GROUP`, a `kuai_assets.features.catalog.TableModel`
whose `compute(con, out, log)` writes the group's Parquet table from the upstream tables it
declares (the only tables its connection can see); `log` is a `kuai_assets.features.spec.GroupLog`:
`log(message)` for the run's console, `log.debug(message)` for diagnostics that only the UI's log
keeps. The SQL groups live in dbt_like_sql/features/.
Adding a Python group is adding a module.
"""
