-- Word-level click rates: how often works whose cover carries each word get clicked, averaged
-- over the cover's words (smoothed toward the population, 30 pseudo-impressions). Label
-- statistics, out of fold: a fit photo's words are rated on the other folds' photos only.
--
-- grain: setup, fold, photo_id
-- continuous: word_click_rate_mean, word_click_rate_max, word_click_rate_min, word_impressions
with words as (
    select photo_id, unnest(words) as word_id
    from raw_text
),

per_photo as (  -- one row per (setup, fold, photo) before the join: 7x fewer rows at scale
    select setup, fold, photo_id, count(*) as impressions, sum(click) as clicks
    from label_history
    group by all
),

per_fold as (
    select p.setup, p.fold, w.word_id, sum(p.impressions) as impressions, sum(p.clicks) as clicks
    from per_photo as p
    join words as w using (photo_id)
    group by all
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['word_id'], ['impressions', 'clicks']) }}
),

rows_per_fold as (
    select setup, fold, sum(impressions) as impressions, sum(clicks) as clicks
    from per_photo
    group by all
),

population_out_of_fold as (
    {{ out_of_fold('rows_per_fold', [], ['impressions', 'clicks']) }}
),

population as (
    select setup, fold, clicks / impressions as click_rate
    from population_out_of_fold
),

scored_photos as (
    select distinct setup, fold, photo_id from model_rows
)

select s.setup, s.fold, s.photo_id,
       avg((coalesce(o.clicks, 0) + 30 * p.click_rate) / (coalesce(o.impressions, 0) + 30))::float
           as word_click_rate_mean,
       max((coalesce(o.clicks, 0) + 30 * p.click_rate) / (coalesce(o.impressions, 0) + 30))::float
           as word_click_rate_max,
       min((coalesce(o.clicks, 0) + 30 * p.click_rate) / (coalesce(o.impressions, 0) + 30))::float
           as word_click_rate_min,
       coalesce(sum(o.impressions), 0)::float as word_impressions
from scored_photos as s
join words as w using (photo_id)
join population as p on p.setup = s.setup and p.fold = s.fold
left join out_of_fold as o on o.setup = s.setup and o.fold = s.fold and o.word_id = w.word_id
group by all
