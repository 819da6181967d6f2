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

folds as (
    select distinct setup, fold from model_rows
),

user_per_fold as (
    select setup, fold, user_id, count(*) as n, sum(click) as clicks, sum(playing_time) as playing
    from label_history
    group by all
),

user_oof as (
    select f.setup, f.fold, u.user_id,
           sum(u.n) as n, sum(u.clicks) / sum(u.n) as click, sum(u.playing) / sum(u.n) as playing
    from user_per_fold as u
    join folds as f on f.setup = u.setup and f.fold <> u.fold
    group by all
),

cluster_per_fold as (
    select h.setup, h.fold, c.k, c.cluster, h.user_id, count(*) as n, sum(h.click) as clicks,
           sum(h.playing_time) as playing
    from label_history as h
    join clusters as c using (photo_id)
    group by all
),

cluster_oof as (
    select f.setup, f.fold, c.k, c.cluster, sum(c.clicks) / sum(c.n) as click, sum(c.playing) / sum(c.n) as playing
    from cluster_per_fold as c
    join folds as f on f.setup = c.setup and f.fold <> c.fold
    group by all
),

user_cluster_oof as (
    select f.setup, f.fold, c.user_id, c.k, c.cluster,
           sum(c.clicks) / sum(c.n) as click, sum(c.playing) / sum(c.n) as playing
    from cluster_per_fold as c
    join folds as f on f.setup = c.setup and f.fold <> c.fold
    group by all
),

row_clusters as (
    select r.setup, r.row_id, r.fold, r.user_id, c.k, c.cluster
    from model_rows as r
    join clusters as c using (photo_id)
),

row_cluster_stats as (
    select rc.setup, rc.row_id, rc.k,
           cs.click as cluster_click, cs.playing as cluster_playing,
           coalesce(ucs.click, u.click) as user_cluster_click,
           coalesce(ucs.playing, u.playing) as user_cluster_playing
    from row_clusters as rc
    left join user_oof as u on u.setup = rc.setup and u.fold = rc.fold and u.user_id = rc.user_id
    left join cluster_oof as cs on cs.setup = rc.setup and cs.fold = rc.fold and cs.k = rc.k and cs.cluster = rc.cluster
    left join user_cluster_oof as ucs
        on ucs.setup = rc.setup and ucs.fold = rc.fold and ucs.user_id = rc.user_id
        and ucs.k = rc.k and ucs.cluster = rc.cluster
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
       u.click::float as baseline_user_click,
       u.playing::float as baseline_user_playing_time,
       u.n::float as baseline_user_rows,
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
from model_rows as r
join raw_interactions as i using (row_id)
left join user_oof as u on u.setup = r.setup and u.fold = r.fold and u.user_id = r.user_id
left join per_row as p on p.setup = r.setup and p.row_id = r.row_id
