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
-- Batches are counted once (one group per user and time, the screen), every per-user count is a
-- window over batches, not rows; the position in the batch is the row's rank by row_id within it;
-- per-photo counts are one aggregate joined on photo_id (train and test photos are disjoint, so
-- photo_id alone names the log).
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
    select split, user_id, time, count(*) as batch_size
    from raw_interactions
    group by split, user_id, time
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
    select row_id, split, user_id, time, photo_id,
           row_number() over (partition by split, user_id, time order by row_id) as position_in_batch
    from raw_interactions
)

select r.row_id,
       b.batch_size::float as batch_size,
       r.position_in_batch::float as position_in_batch,
       ((b.time - b.previous_time) / 1000.0)::float as seconds_since_previous_batch,
       ((b.next_time - b.time) / 1000.0)::float as seconds_until_next_batch,
       b.impressions_previous_1min::float as impressions_previous_1min,
       b.impressions_previous_10min::float as impressions_previous_10min,
       b.impressions_next_1min::float as impressions_next_1min,
       b.impressions_next_10min::float as impressions_next_10min,
       b.impressions_before_in_log::float as impressions_before_in_log,
       b.impressions_remaining_in_log::float as impressions_remaining_in_log,
       ((b.impressions_before_in_log + b.batch_size + b.impressions_remaining_in_log)
           / case b.split when 'train' then h.train else h.test end)::float as user_impressions_per_hour,
       p.photo_rows::float as photo_impressions_in_log,
       (p.photo_rows / ((p.photo_last - p.photo_first) / 3600000.0 + 1.0))::float as photo_impressions_per_hour,
       ((b.time - p.photo_first) / 3600000.0)::float as hours_since_photo_first_shown,
       (b.previous_time is null)::integer as is_first_batch,
       (b.next_time is null)::integer as is_last_batch
from batch_rows as r
join batch_context as b on b.split = r.split and b.user_id = r.user_id and b.time = r.time
join photos as p on p.photo_id = r.photo_id
cross join split_hours as h
