-- User behaviour: how much and how the user clicks, likes, follows and watches, smoothed toward
-- the population (Bayesian, 20 pseudo-impressions). Label statistics, out of fold: the row for
-- (setup, fold) is computed from that setup's fit rows outside the fold.
--
-- grain: setup, fold, user_id
-- continuous: user_impressions, user_click_rate, user_like_rate, user_follow_rate, user_like_per_click
-- continuous: user_playing_ratio, user_playing_seconds_per_click, user_clicked_duration, user_duration_click_lift
with per_fold as (
    select setup, fold, user_id,
           count(*) as impressions,
           sum(click) as clicks,
           sum("like") as likes,
           sum(follow) as follows,
           sum(playing_seconds) as playing_seconds,
           sum(duration_time * click) as clicked_duration,
           sum(duration_time) as shown_duration
    from label_history
    group by all
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['user_id'],
                   ['impressions', 'clicks', 'likes', 'follows', 'playing_seconds', 'clicked_duration', 'shown_duration']) }}
),

population as (
    select setup, fold,
           sum(clicks) / sum(impressions) as click_rate,
           sum(likes) / sum(impressions) as like_rate,
           sum(follows) / sum(impressions) as follow_rate,
           sum(playing_seconds) / greatest(sum(clicked_duration), 1) as playing_ratio
    from out_of_fold
    group by all
)

select o.setup, o.fold, o.user_id,
       o.impressions::float as user_impressions,
       ((o.clicks + 20 * p.click_rate) / (o.impressions + 20))::float as user_click_rate,
       ((o.likes + 20 * p.like_rate) / (o.impressions + 20))::float as user_like_rate,
       ((o.follows + 20 * p.follow_rate) / (o.impressions + 20))::float as user_follow_rate,
       ((o.likes + 1) / (o.clicks + 20))::float as user_like_per_click,
       ((o.playing_seconds + 20 * p.playing_ratio * 20) / (o.clicked_duration + 20 * 20))::float as user_playing_ratio,
       (o.playing_seconds / greatest(o.clicks, 1))::float as user_playing_seconds_per_click,
       (o.clicked_duration / greatest(o.clicks, 1))::float as user_clicked_duration,
       ((o.clicked_duration / greatest(o.clicks, 1)) / greatest(o.shown_duration / o.impressions, 1))::float
           as user_duration_click_lift
from out_of_fold as o
join population as p using (setup, fold)
