-- The labelled rows each setup may learn statistics from: its fit rows, with their fold.
-- Every label statistic reads this table, never raw_interactions, so a scored row's label
-- can never reach a feature.
--
-- playing_seconds is playing_time capped at twice the duration plus a minute: the log holds
-- sessions of up to 1.9M seconds, and every statistic of watching time reads the capped value.
--
-- grain: setup, row_id
select r.setup, r.fold, r.row_id, r.user_id, r.photo_id, r.time,
       i.click, i."like", i.follow, i.playing_time, i.duration_time,
       least(i.playing_time, 2 * i.duration_time + 60) as playing_seconds
from model_rows as r
join raw_interactions as i using (row_id)
where r.role = 'fit'
