{#-
  photo_clusters(): two CTEs, `levels` (the coarsest and finest k of video_clusters) and
  `photo_clusters` (one row per photo_id with its coarse_cluster and fine_cluster), for a model
  that looks up a photo's clusters at both k once per row. Ends with the comma before the next CTE.
-#}
{% macro photo_clusters() -%}
levels as (
    select min(k) as coarse, max(k) as fine from video_clusters
),

photo_clusters as (
    select c.photo_id,
           max(c.cluster) filter (where c.k = l.coarse) as coarse_cluster,
           max(c.cluster) filter (where c.k = l.fine) as fine_cluster
    from video_clusters as c, levels as l
    where c.k in (l.coarse, l.fine)
    group by c.photo_id
),
{%- endmacro %}
