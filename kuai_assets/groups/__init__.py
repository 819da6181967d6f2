"""Feature groups written in Python: one module per group, found by discovery, never listed.

A module here defines one module-level `GROUP`, a `kuai_assets.features.catalog.TableModel`
whose `compute(con, out, log)` writes the group's Parquet table from the upstream tables it
declares (the only tables its connection can see). The SQL groups live in dbt_like_sql/features/.
Adding a Python group is adding a module.
"""
