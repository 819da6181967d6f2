-- The published top-10 recipe's features, for the `baseline` model configuration: the user's
-- mean click and playing_time and row count; per-cluster and per-(user, cluster) mean click and
-- playing_time at the coarsest and finest k (100 and 500 by default), falling back to the user's
-- mean for unseen pairs; time and duration. Label statistics, out of fold. Off in the full model.
--
-- grain: setup, row_id
-- uses_labels: true
-- default: disabled
-- continuous: baseline_user_click, baseline_user_playing_time, baseline_user_rows
-- continuous: baseline_cluster_click_coarse, baseline_cluster_playing_time_coarse
-- continuous: baseline_cluster_click_fine, baseline_cluster_playing_time_fine
-- continuous: baseline_user_cluster_click_coarse, baseline_user_cluster_playing_time_coarse
-- continuous: baseline_user_cluster_click_fine, baseline_user_cluster_playing_time_fine
-- continuous: baseline_hour, baseline_duration_time
with levels as (
    select min(k) as coarse, max(k) as fine from video_clusters
),

clusters as (
    select c.photo_id, c.k, c.cluster
    from video_clusters as c, levels
    where c.k in (levels.coarse, levels.fine)
),

-- out of fold by subtraction: a row sees its setup's whole history minus its own fold
-- (scored rows have fold -1, which has no part, so they see everything)
user_part as (
    select setup, fold, user_id, count(*) as n, sum(click) as clicks, sum(playing_time) as playing
    from label_history
    group by all
),

user_total as (
    select setup, user_id, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from user_part
    group by all
),

history as (
    select h.setup, h.fold, h.user_id, c.k, c.cluster, h.click, h.playing_time
    from label_history as h
    join clusters as c using (photo_id)
),

pair_part as (
    select setup, fold, user_id, k, cluster, count(*) as n, sum(click) as clicks, sum(playing_time) as playing
    from history
    group by all
),

pair_total as (
    select setup, user_id, k, cluster, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from pair_part
    group by all
),

cluster_part as (
    select setup, fold, k, cluster, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from pair_part
    group by all
),

cluster_total as (
    select setup, k, cluster, sum(n) as n, sum(clicks) as clicks, sum(playing) as playing
    from cluster_part
    group by all
),

rows_with_user as (
    select r.setup, r.row_id, r.fold, r.user_id, r.photo_id, r.time,
           ut.n - coalesce(up.n, 0) as user_n,
           (ut.clicks - coalesce(up.clicks, 0)) / nullif(ut.n - coalesce(up.n, 0), 0) as user_click,
           (ut.playing - coalesce(up.playing, 0)) / nullif(ut.n - coalesce(up.n, 0), 0) as user_playing
    from model_rows as r
    left join user_total as ut on ut.setup = r.setup and ut.user_id = r.user_id
    left join user_part as up on up.setup = r.setup and up.fold = r.fold and up.user_id = r.user_id
),

row_cluster_stats as (
    select r.setup, r.row_id, c.k,
           (ct.clicks - coalesce(cp.clicks, 0)) / nullif(ct.n - coalesce(cp.n, 0), 0) as cluster_click,
           (ct.playing - coalesce(cp.playing, 0)) / nullif(ct.n - coalesce(cp.n, 0), 0) as cluster_playing,
           coalesce((pt.clicks - coalesce(pp.clicks, 0)) / nullif(pt.n - coalesce(pp.n, 0), 0), r.user_click)
               as user_cluster_click,
           coalesce((pt.playing - coalesce(pp.playing, 0)) / nullif(pt.n - coalesce(pp.n, 0), 0), r.user_playing)
               as user_cluster_playing
    from rows_with_user as r
    join clusters as c using (photo_id)
    left join cluster_total as ct on ct.setup = r.setup and ct.k = c.k and ct.cluster = c.cluster
    left join cluster_part as cp on cp.setup = r.setup and cp.fold = r.fold and cp.k = c.k and cp.cluster = c.cluster
    left join pair_total as pt
        on pt.setup = r.setup and pt.user_id = r.user_id and pt.k = c.k and pt.cluster = c.cluster
    left join pair_part as pp
        on pp.setup = r.setup and pp.fold = r.fold and pp.user_id = r.user_id and pp.k = c.k and pp.cluster = c.cluster
),

per_row as (
    select s.setup, s.row_id,
           max(s.cluster_click) filter (where s.k = l.coarse) as cluster_click_coarse,
           max(s.cluster_playing) filter (where s.k = l.coarse) as cluster_playing_coarse,
           max(s.cluster_click) filter (where s.k = l.fine) as cluster_click_fine,
           max(s.cluster_playing) filter (where s.k = l.fine) as cluster_playing_fine,
           max(s.user_cluster_click) filter (where s.k = l.coarse) as user_cluster_click_coarse,
           max(s.user_cluster_playing) filter (where s.k = l.coarse) as user_cluster_playing_coarse,
           max(s.user_cluster_click) filter (where s.k = l.fine) as user_cluster_click_fine,
           max(s.user_cluster_playing) filter (where s.k = l.fine) as user_cluster_playing_fine
    from row_cluster_stats as s, levels as l
    group by s.setup, s.row_id
)

select r.setup, r.row_id,
       r.user_click::float as baseline_user_click,
       r.user_playing::float as baseline_user_playing_time,
       r.user_n::float as baseline_user_rows,
       p.cluster_click_coarse::float as baseline_cluster_click_coarse,
       p.cluster_playing_coarse::float as baseline_cluster_playing_time_coarse,
       p.cluster_click_fine::float as baseline_cluster_click_fine,
       p.cluster_playing_fine::float as baseline_cluster_playing_time_fine,
       p.user_cluster_click_coarse::float as baseline_user_cluster_click_coarse,
       p.user_cluster_playing_coarse::float as baseline_user_cluster_playing_time_coarse,
       p.user_cluster_click_fine::float as baseline_user_cluster_click_fine,
       p.user_cluster_playing_fine::float as baseline_user_cluster_playing_time_fine,
       (((r.time // 3600000) % 24))::float as baseline_hour,
       i.duration_time::float as baseline_duration_time
from rows_with_user as r
join raw_interactions as i using (row_id)
left join per_row as p on p.setup = r.setup and p.row_id = r.row_id
