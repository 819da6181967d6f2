-- The user's taste in two attributes every work has beyond its faces: whether the cover carries
-- words, and how long the work runs. Click rate on covers with and without words, each smoothed
-- toward the user's own rate (10 pseudo-impressions at (clicks + 2) / (impressions + 10), as in
-- user_face_preference), and their difference; and the least-squares slope of click on
-- ln(1 + duration_time) over the user's impressions, shrunk toward zero by adding 30
-- impressions' worth of the population's variance of that log duration to the user's own.
-- Label statistics, out of fold.
--
-- grain: setup, fold, user_id
-- continuous: user_click_rate_with_text, user_click_rate_without_text, user_text_click_lift
-- continuous: user_log_duration_click_slope
with history as (
    select h.setup, h.fold, h.user_id, h.click,
           coalesce(t.n_words, 0) > 0 as has_text,
           ln(1 + h.duration_time) as log_duration
    from label_history as h
    left join raw_text as t using (photo_id)
),

per_fold as (
    select setup, fold, user_id,
           count(*) as n, sum(click) as clicks,
           count(*) filter (where has_text) as n_text,
           coalesce(sum(click) filter (where has_text), 0) as clicks_text,
           sum(log_duration) as sum_x,
           sum(log_duration * log_duration) as sum_xx,
           sum(log_duration * click) as sum_xy
    from history
    group by all
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['user_id'], ['n', 'clicks', 'n_text', 'clicks_text', 'sum_x', 'sum_xx', 'sum_xy']) }}
),

population as (
    select setup, fold,
           (sum(sum_xx) - sum(sum_x) * sum(sum_x) / sum(n)) / sum(n) as log_duration_variance
    from out_of_fold
    group by all
),

with_prior as (
    select *, (clicks + 2) / (n + 10) as prior from out_of_fold
)

select o.setup, o.fold, o.user_id,
       ((o.clicks_text + 10 * o.prior) / (o.n_text + 10))::float as user_click_rate_with_text,
       ((o.clicks - o.clicks_text + 10 * o.prior) / (o.n - o.n_text + 10))::float as user_click_rate_without_text,
       ((o.clicks_text + 10 * o.prior) / (o.n_text + 10)
        - (o.clicks - o.clicks_text + 10 * o.prior) / (o.n - o.n_text + 10))::float as user_text_click_lift,
       ((o.sum_xy - o.sum_x * o.clicks / o.n)
        / (o.sum_xx - o.sum_x * o.sum_x / o.n + 30 * p.log_duration_variance))::float as user_log_duration_click_slope
from with_prior as o
join population as p using (setup, fold)
