-- Impression context, read from the impression log itself (the signals that separated the top
-- teams): the batch the row was shown in (works shown to one user at the same time form one
-- screen), where it sat in the batch, the user's impressions in the minutes before and after,
-- the time since the previous batch and until the next, the impressions still to come, and the
-- photo's exposure in the log. Computed within each window's own log: train rows from the train
-- log, test rows from the test log, which is given in full at prediction time.
--
-- grain: row_id
-- uses_scored_window_log: true
-- continuous: batch_size, position_in_batch, seconds_since_previous_batch, seconds_until_next_batch
-- continuous: impressions_previous_1min, impressions_previous_10min, impressions_next_1min, impressions_next_10min
-- continuous: impressions_before_in_log, impressions_remaining_in_log, user_impressions_per_hour
-- continuous: photo_impressions_in_log, photo_impressions_per_hour, hours_since_photo_first_shown
-- discrete: is_first_batch, is_last_batch
-- No window runs over every row: each batch is one group (its rows listed in row_id order, so
-- the position in the batch is the place in that list), every per-user count is a window over
-- batches (8.8 million at preliminary scale, not 24 million rows), the user's total is before +
-- this batch + remaining, and per-photo counts are one aggregate joined on photo_id (train and
-- test photos are disjoint, so photo_id alone names the log). Joining per-user and per-photo
-- tables on (split, ...) let a planner short of row estimates join two large inputs on `split`.
with split_hours as (
    select greatest((max(time) filter (where split = 'train') - min(time) filter (where split = 'train'))
                    / 3600000.0, 1.0) as train,
           greatest((max(time) filter (where split = 'test') - min(time) filter (where split = 'test'))
                    / 3600000.0, 1.0) as test
    from raw_interactions
),

photos as (
    select photo_id, count(*) as photo_rows, min(time) as photo_first, max(time) as photo_last
    from raw_interactions
    group by photo_id
),

batches as (
    select split, user_id, time, count(*) as batch_size,
           list_sort(list({'row_id': row_id, 'photo_id': photo_id})) as shown
    from raw_interactions
    group by all
),

batch_context as (
    select *,
           lag(time) over user_timeline as previous_time,
           lead(time) over user_timeline as next_time,
           coalesce(sum(batch_size) over (partition by split, user_id order by time
               range between 60000 preceding and 1 preceding), 0) as impressions_previous_1min,
           coalesce(sum(batch_size) over (partition by split, user_id order by time
               range between 600000 preceding and 1 preceding), 0) as impressions_previous_10min,
           coalesce(sum(batch_size) over (partition by split, user_id order by time
               range between 1 following and 60000 following), 0) as impressions_next_1min,
           coalesce(sum(batch_size) over (partition by split, user_id order by time
               range between 1 following and 600000 following), 0) as impressions_next_10min,
           coalesce(sum(batch_size) over (partition by split, user_id order by time
               rows between unbounded preceding and 1 preceding), 0) as impressions_before_in_log,
           coalesce(sum(batch_size) over (partition by split, user_id order by time
               rows between 1 following and unbounded following), 0) as impressions_remaining_in_log
    from batches
    window user_timeline as (partition by split, user_id order by time)
),

batch_rows as (
    select b.*, unnest(b.shown) as row, generate_subscripts(b.shown, 1) as position_in_batch
    from batch_context as b
)

select r.row.row_id as row_id,
       r.batch_size::float as batch_size,
       r.position_in_batch::float as position_in_batch,
       ((r.time - r.previous_time) / 1000.0)::float as seconds_since_previous_batch,
       ((r.next_time - r.time) / 1000.0)::float as seconds_until_next_batch,
       r.impressions_previous_1min::float as impressions_previous_1min,
       r.impressions_previous_10min::float as impressions_previous_10min,
       r.impressions_next_1min::float as impressions_next_1min,
       r.impressions_next_10min::float as impressions_next_10min,
       r.impressions_before_in_log::float as impressions_before_in_log,
       r.impressions_remaining_in_log::float as impressions_remaining_in_log,
       ((r.impressions_before_in_log + r.batch_size + r.impressions_remaining_in_log)
           / case r.split when 'train' then h.train else h.test end)::float as user_impressions_per_hour,
       p.photo_rows::float as photo_impressions_in_log,
       (p.photo_rows / ((p.photo_last - p.photo_first) / 3600000.0 + 1.0))::float as photo_impressions_per_hour,
       ((r.time - p.photo_first) / 3600000.0)::float as hours_since_photo_first_shown,
       (r.previous_time is null)::integer as is_first_batch,
       (r.next_time is null)::integer as is_last_batch
from batch_rows as r
join photos as p on p.photo_id = r.row.photo_id
cross join split_hours as h
