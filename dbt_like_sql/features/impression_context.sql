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
-- Every per-user and per-photo count is a window over the log, and the only join is the row to
-- its batch on (split, user_id, time): joins to per-user and per-photo tables would let a
-- planner short of row estimates join two large inputs on `split` alone.
with log as (
    select row_id, split, user_id, photo_id, time,
           count(*) over (partition by split, user_id) as user_rows,
           min(time) over (partition by split) as split_first,
           max(time) over (partition by split) as split_last,
           count(*) over (partition by split, photo_id) as photo_rows,
           min(time) over (partition by split, photo_id) as photo_first,
           max(time) over (partition by split, photo_id) as photo_last,
           row_number() over (partition by split, user_id, time order by row_id) as position_in_batch
    from raw_interactions
),

batches as (
    select split, user_id, time, count(*) as batch_size
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
)

select l.row_id,
       b.batch_size::float as batch_size,
       l.position_in_batch::float as position_in_batch,
       ((l.time - b.previous_time) / 1000.0)::float as seconds_since_previous_batch,
       ((b.next_time - l.time) / 1000.0)::float as seconds_until_next_batch,
       b.impressions_previous_1min::float as impressions_previous_1min,
       b.impressions_previous_10min::float as impressions_previous_10min,
       b.impressions_next_1min::float as impressions_next_1min,
       b.impressions_next_10min::float as impressions_next_10min,
       b.impressions_before_in_log::float as impressions_before_in_log,
       b.impressions_remaining_in_log::float as impressions_remaining_in_log,
       (l.user_rows / greatest((l.split_last - l.split_first) / 3600000.0, 1.0))::float as user_impressions_per_hour,
       l.photo_rows::float as photo_impressions_in_log,
       (l.photo_rows / ((l.photo_last - l.photo_first) / 3600000.0 + 1.0))::float as photo_impressions_per_hour,
       ((l.time - l.photo_first) / 3600000.0)::float as hours_since_photo_first_shown,
       (b.previous_time is null)::integer as is_first_batch,
       (b.next_time is null)::integer as is_last_batch
from log as l
join batch_context as b using (split, user_id, time)
