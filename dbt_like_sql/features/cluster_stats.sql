-- Visual cluster statistics: how often photos of a visual cluster get clicked, liked and watched
-- by everyone, smoothed toward the population (50 pseudo-impressions). Label statistics, out of fold.
--
-- grain: setup, fold, k, cluster
-- continuous: cluster_impressions, cluster_click_rate, cluster_like_rate, cluster_playing_ratio
with per_photo as (  -- one row per (setup, fold, photo) before the join: 7x fewer rows at scale
    select setup, fold, photo_id,
           count(*) as impressions, sum(click) as clicks, sum("like") as likes,
           sum(playing_seconds) as playing_seconds,
           sum(duration_time * click) as clicked_duration
    from label_history
    group by all
),

per_fold as (
    select p.setup, p.fold, c.k, c.cluster,
           sum(p.impressions) as impressions, sum(p.clicks) as clicks, sum(p.likes) as likes,
           sum(p.playing_seconds) as playing_seconds, sum(p.clicked_duration) as clicked_duration
    from per_photo as p
    join video_clusters as c using (photo_id)
    group by all
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['k', 'cluster'], ['impressions', 'clicks', 'likes', 'playing_seconds', 'clicked_duration']) }}
),

population as (
    select setup, fold, k,
           sum(clicks) / sum(impressions) as click_rate,
           sum(likes) / sum(impressions) as like_rate,
           sum(playing_seconds) / greatest(sum(clicked_duration), 1) as playing_ratio
    from out_of_fold
    group by all
)

select o.setup, o.fold, o.k, o.cluster,
       o.impressions::float as cluster_impressions,
       ((o.clicks + 50 * p.click_rate) / (o.impressions + 50))::float as cluster_click_rate,
       ((o.likes + 50 * p.like_rate) / (o.impressions + 50))::float as cluster_like_rate,
       ((o.playing_seconds + 50 * p.playing_ratio * 20) / (o.clicked_duration + 50 * 20))::float as cluster_playing_ratio
from out_of_fold as o
join population as p using (setup, fold, k)
