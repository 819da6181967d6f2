-- Visual affinity: the user's click rate on each visual cluster (at every k), smoothed toward the
-- user's own rate (10 pseudo-impressions), with the impressions and watch time behind it. This is
-- the bridge to unseen test photos: a new photo lands in clusters the user already has history on.
-- Label statistics, out of fold: each fold sees its setup's whole history minus its own part
-- (scored rows have fold -1, which has no part), so no part is ever repeated per fold and
-- grouped back together.
--
-- grain: setup, fold, user_id, k, cluster
-- continuous: user_cluster_impressions, user_cluster_click_rate, user_cluster_click_lift, user_cluster_playing_seconds
with history as (
    select h.setup, h.fold, h.user_id, c.k, c.cluster, h.click,
           h.playing_seconds
    from label_history as h
    join video_clusters as c using (photo_id)
),

part as (
    select setup, fold, user_id, k, cluster,
           count(*) as impressions, sum(click) as clicks, sum(playing_seconds) as playing_seconds
    from history
    group by all
),

total as (
    select setup, user_id, k, cluster,
           sum(impressions) as impressions, sum(clicks) as clicks, sum(playing_seconds) as playing_seconds
    from part
    group by all
),

folds as (
    select distinct setup, fold from model_rows
),

out_of_fold as (
    select t.setup, f.fold, t.user_id, t.k, t.cluster,
           t.impressions - coalesce(p.impressions, 0) as impressions,
           t.clicks - coalesce(p.clicks, 0) as clicks,
           t.playing_seconds - coalesce(p.playing_seconds, 0) as playing_seconds
    from total as t
    join folds as f on f.setup = t.setup
    left join part as p
        on p.setup = t.setup and p.fold = f.fold and p.user_id = t.user_id and p.k = t.k and p.cluster = t.cluster
    where t.impressions > coalesce(p.impressions, 0)
),

user_part as (
    select setup, fold, user_id, k, sum(impressions) as impressions, sum(clicks) as clicks
    from part
    group by all
),

user_total as (
    select setup, user_id, k, sum(impressions) as impressions, sum(clicks) as clicks
    from user_part
    group by all
),

user_rate as (
    select t.setup, f.fold, t.user_id, t.k,
           t.impressions - coalesce(p.impressions, 0) as impressions,
           t.clicks - coalesce(p.clicks, 0) as clicks
    from user_total as t
    join folds as f on f.setup = t.setup
    left join user_part as p on p.setup = t.setup and p.fold = f.fold and p.user_id = t.user_id and p.k = t.k
    where t.impressions > coalesce(p.impressions, 0)
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
