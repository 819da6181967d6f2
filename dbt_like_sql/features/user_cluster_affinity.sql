-- Visual affinity: the user's click rate on each visual cluster (at every k), smoothed toward the
-- user's own rate (10 pseudo-impressions), with the impressions and watch time behind it. This is
-- the bridge to unseen test photos: a new photo lands in clusters the user already has history on.
-- Label statistics, out of fold.
--
-- grain: setup, fold, user_id, k, cluster
-- uses_labels: true
-- continuous: user_cluster_impressions, user_cluster_click_rate, user_cluster_click_lift, user_cluster_playing_seconds
with history as (
    select h.setup, h.fold, h.user_id, c.k, c.cluster, h.click,
           least(h.playing_time, 2 * h.duration_time + 60) as playing_seconds
    from label_history as h
    join video_clusters as c using (photo_id)
),

per_fold as (
    select setup, fold, user_id, k, cluster,
           count(*) as impressions, sum(click) as clicks, sum(playing_seconds) as playing_seconds
    from history
    group by all
),

folds as (
    select distinct setup, fold from model_rows
),

out_of_fold as (
    select f.setup, f.fold, p.user_id, p.k, p.cluster,
           sum(p.impressions) as impressions, sum(p.clicks) as clicks,
           sum(p.playing_seconds) as playing_seconds
    from per_fold as p
    join folds as f on f.setup = p.setup and f.fold <> p.fold
    group by all
),

user_rate as (
    select setup, fold, user_id, k,
           sum(clicks) as clicks, sum(impressions) as impressions
    from out_of_fold
    group by all
),

population as (
    select setup, fold, k, sum(clicks) / sum(impressions) as click_rate
    from user_rate
    group by all
)

select o.setup, o.fold, o.user_id, o.k, o.cluster,
       o.impressions::float as user_cluster_impressions,
       ((o.clicks + 10 * u.prior) / (o.impressions + 10))::float as user_cluster_click_rate,
       (((o.clicks + 10 * u.prior) / (o.impressions + 10)) / u.prior)::float as user_cluster_click_lift,
       (o.playing_seconds / o.impressions)::float as user_cluster_playing_seconds
from out_of_fold as o
join (
    select r.setup, r.fold, r.user_id, r.k,
           (r.clicks + 20 * p.click_rate) / (r.impressions + 20) as prior
    from user_rate as r
    join population as p using (setup, fold, k)
) as u using (setup, fold, user_id, k)
