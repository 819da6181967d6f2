-- The labelled rows each setup may learn statistics from: its fit rows, with their fold.
-- Every label statistic reads this table, never raw_interactions, so a scored row's label
-- can never reach a feature.
--
-- grain: setup, row_id
select r.setup, r.fold, r.row_id, r.user_id, r.photo_id, r.time,
       i.click, i."like", i.follow, i.playing_time, i.duration_time
from model_rows as r
join raw_interactions as i using (row_id)
where r.role = 'fit'
