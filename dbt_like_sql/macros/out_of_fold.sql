{#-
  Macros shared by the SQL models: Jinja, rendered before a model is parsed or run (dbt's
  convention). A model's lineage, code version and the query an engine runs all come from its
  rendered text, so editing a macro marks every model that calls it unsynced.

  out_of_fold(relation, keys, sums): the sums of `relation` (one row per setup, fold and `keys`)
  over every other fold of the same setup, for each (setup, fold) of model_rows: what a fit row
  of fold f may learn from. Scored rows have fold -1, which no fit row has, so theirs are the sums
  over every fit row of their setup. Columns: setup, fold, the keys, then the sums by name.
-#}
{% macro out_of_fold(relation, keys, sums) -%}
select f.setup, f.fold{% for key in keys %}, p.{{ key }}{% endfor %},
       {% for column in sums %}sum(p.{{ column }}) as {{ column }}{{ ", " if not loop.last }}{% endfor %}
from {{ relation }} as p
join (select distinct setup, fold from model_rows) as f on f.setup = p.setup and f.fold <> p.fold
group by all
{%- endmacro %}
