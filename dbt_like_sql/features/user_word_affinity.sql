-- The user's taste in cover words: the user's click rate on works carrying each of this cover's
-- words, smoothed toward the user's own rate (5 pseudo-impressions), averaged over the words.
-- Label statistics, out of fold. (user, word) pairs are many, so instead of expanding every fold
-- this computes all-history totals and subtracts the row's own fold.
--
-- grain: setup, row_id
-- continuous: user_word_click_rate_mean, user_word_click_rate_max, user_word_impressions
with words as (
    select photo_id, unnest(words) as word_id
    from raw_text
),

per_fold as (
    select h.setup, h.fold, h.user_id, w.word_id, count(*) as impressions, sum(h.click) as clicks
    from label_history as h
    join words as w using (photo_id)
    group by all
),

totals as (
    select setup, user_id, word_id, sum(impressions) as impressions, sum(clicks) as clicks
    from per_fold
    group by all
),

user_per_fold as (
    select setup, fold, user_id, count(*) as impressions, sum(click) as clicks
    from label_history
    group by all
),

user_prior as (
    select r.setup, r.fold, r.user_id,
           (sum(u.clicks) filter (where u.fold <> r.fold) + 2)
               / (sum(u.impressions) filter (where u.fold <> r.fold) + 10) as prior
    from (select distinct setup, fold, user_id from model_rows) as r
    join user_per_fold as u on u.setup = r.setup and u.user_id = r.user_id
    group by all
),

row_words as (
    select r.setup, r.row_id, r.fold, r.user_id, w.word_id
    from model_rows as r
    join words as w using (photo_id)
),

row_word_stats as (
    select rw.setup, rw.row_id, up.prior,
           coalesce(t.impressions, 0) - coalesce(p.impressions, 0) as impressions,
           coalesce(t.clicks, 0) - coalesce(p.clicks, 0) as clicks
    from row_words as rw
    join user_prior as up on up.setup = rw.setup and up.fold = rw.fold and up.user_id = rw.user_id
    left join totals as t on t.setup = rw.setup and t.user_id = rw.user_id and t.word_id = rw.word_id
    left join per_fold as p
        on p.setup = rw.setup and p.fold = rw.fold and p.user_id = rw.user_id and p.word_id = rw.word_id
)

select setup, row_id,
       avg((clicks + 5 * prior) / (impressions + 5))::float as user_word_click_rate_mean,
       max((clicks + 5 * prior) / (impressions + 5))::float as user_word_click_rate_max,
       sum(impressions)::float as user_word_impressions
from row_word_stats
group by setup, row_id
