-- The published top-10 recipe's features, for the `baseline` model configuration: the user's
-- mean click and playing_time and row count; per-cluster and per-(user, cluster) mean click and
-- playing_time at the coarsest and finest k (100 and 500 by default), falling back to the user's
-- mean for unseen pairs; time and duration. Label statistics, out of fold. Off in the full model.
--
-- grain: setup, row_id
-- default: disabled
-- continuous: baseline_user_click, baseline_user_playing_time, baseline_user_rows
-- continuous: baseline_cluster_click_coarse, baseline_cluster_playing_time_coarse
-- continuous: baseline_cluster_click_fine, baseline_cluster_playing_time_fine
-- continuous: baseline_user_cluster_click_coarse, baseline_user_cluster_playing_time_coarse
-- continuous: baseline_user_cluster_click_fine, baseline_user_cluster_playing_time_fine
-- continuous: baseline_hour, baseline_duration_time
-- Each statistic is a small table looked up once per row (the photo's clusters at both k pivoted
-- onto one row per photo), so no row is ever repeated per k and grouped back together.
with {{ photo_clusters() }}

history as (
    select h.setup, h.fold, h.user_id, h.click, h.playing_time, p.coarse_cluster, p.fine_cluster
    from label_history as h
    left join photo_clusters as p using (photo_id)
),

-- out of fold by subtraction: a row sees its setup's whole history minus its own fold
-- (scored rows have fold -1, which has no part, so they see everything)
user_part as (
    select setup, fold, user_id, count(*) as n, sum(click) as clicks, sum(playing_time) as playing
    from history
    group by all
),

user_total as (
    select setup, user_id, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from user_part
    group by all
),

{% for level in ['coarse', 'fine'] %}
{{ level }}_pair_part as (
    select setup, fold, user_id, {{ level }}_cluster as cluster,
           count(*) as n, sum(click) as clicks, sum(playing_time) as playing
    from history
    where {{ level }}_cluster is not null
    group by all
),

{{ level }}_pair_total as (
    select setup, user_id, cluster, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from {{ level }}_pair_part
    group by all
),

{{ level }}_cluster_part as (
    select h.setup, h.fold, p.{{ level }}_cluster as cluster,
           count(*) as n, sum(h.click) as clicks, sum(h.playing_time) as playing
    from label_history as h
    join photo_clusters as p using (photo_id)
    where p.{{ level }}_cluster is not null
    group by all
),

{{ level }}_cluster_total as (
    select setup, cluster, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from {{ level }}_cluster_part
    group by all
),
{% endfor %}

rows as (
    select r.setup, r.row_id, r.time, i.duration_time, p.coarse_cluster, p.fine_cluster,
           ut.n - coalesce(up.n, 0) as user_n,
           (ut.clicks - coalesce(up.clicks, 0)) / nullif(ut.n - coalesce(up.n, 0), 0) as user_click,
           (ut.playing - coalesce(up.playing, 0)) / nullif(ut.n - coalesce(up.n, 0), 0) as user_playing,
           (cct.clicks - coalesce(ccp.clicks, 0)) / nullif(cct.n - coalesce(ccp.n, 0), 0) as cluster_click_coarse,
           (cct.playing - coalesce(ccp.playing, 0)) / nullif(cct.n - coalesce(ccp.n, 0), 0) as cluster_playing_coarse,
           (fct.clicks - coalesce(fcp.clicks, 0)) / nullif(fct.n - coalesce(fcp.n, 0), 0) as cluster_click_fine,
           (fct.playing - coalesce(fcp.playing, 0)) / nullif(fct.n - coalesce(fcp.n, 0), 0) as cluster_playing_fine,
           (cpt.clicks - coalesce(cpp.clicks, 0)) / nullif(cpt.n - coalesce(cpp.n, 0), 0) as pair_click_coarse,
           (cpt.playing - coalesce(cpp.playing, 0)) / nullif(cpt.n - coalesce(cpp.n, 0), 0) as pair_playing_coarse,
           (fpt.clicks - coalesce(fpp.clicks, 0)) / nullif(fpt.n - coalesce(fpp.n, 0), 0) as pair_click_fine,
           (fpt.playing - coalesce(fpp.playing, 0)) / nullif(fpt.n - coalesce(fpp.n, 0), 0) as pair_playing_fine
    from model_rows as r
    join raw_interactions as i using (row_id)
    left join photo_clusters as p on p.photo_id = r.photo_id
    left join user_total as ut on ut.setup = r.setup and ut.user_id = r.user_id
    left join user_part as up on up.setup = r.setup and up.fold = r.fold and up.user_id = r.user_id
    left join coarse_cluster_total as cct on cct.setup = r.setup and cct.cluster = p.coarse_cluster
    left join coarse_cluster_part as ccp
        on ccp.setup = r.setup and ccp.fold = r.fold and ccp.cluster = p.coarse_cluster
    left join fine_cluster_total as fct on fct.setup = r.setup and fct.cluster = p.fine_cluster
    left join fine_cluster_part as fcp
        on fcp.setup = r.setup and fcp.fold = r.fold and fcp.cluster = p.fine_cluster
    left join coarse_pair_total as cpt
        on cpt.setup = r.setup and cpt.user_id = r.user_id and cpt.cluster = p.coarse_cluster
    left join coarse_pair_part as cpp
        on cpp.setup = r.setup and cpp.fold = r.fold and cpp.user_id = r.user_id and cpp.cluster = p.coarse_cluster
    left join fine_pair_total as fpt
        on fpt.setup = r.setup and fpt.user_id = r.user_id and fpt.cluster = p.fine_cluster
    left join fine_pair_part as fpp
        on fpp.setup = r.setup and fpp.fold = r.fold and fpp.user_id = r.user_id and fpp.cluster = p.fine_cluster
)

-- an unseen (user, cluster) pair falls back to the user's mean
select setup, row_id,
       user_click::float as baseline_user_click,
       user_playing::float as baseline_user_playing_time,
       user_n::float as baseline_user_rows,
       cluster_click_coarse::float as baseline_cluster_click_coarse,
       cluster_playing_coarse::float as baseline_cluster_playing_time_coarse,
       cluster_click_fine::float as baseline_cluster_click_fine,
       cluster_playing_fine::float as baseline_cluster_playing_time_fine,
       (case when coarse_cluster is not null then coalesce(pair_click_coarse, user_click) end)::float
           as baseline_user_cluster_click_coarse,
       (case when coarse_cluster is not null then coalesce(pair_playing_coarse, user_playing) end)::float
           as baseline_user_cluster_playing_time_coarse,
       (case when fine_cluster is not null then coalesce(pair_click_fine, user_click) end)::float
           as baseline_user_cluster_click_fine,
       (case when fine_cluster is not null then coalesce(pair_playing_fine, user_playing) end)::float
           as baseline_user_cluster_playing_time_fine,
       (((time // 3600000) % 24))::float as baseline_hour,
       duration_time::float as baseline_duration_time
from rows
