-- Duration and time: the work's length (0 is a still picture), the hour of the (anonymised,
-- periodic) day, and how the length compares with what this user is usually shown. No labels.
--
-- grain: row_id
-- continuous: duration_time, hour_of_day, user_duration_mean, duration_vs_user_mean
-- discrete: is_still_picture
with user_duration as (
    select user_id, avg(duration_time) as user_duration_mean
    from raw_interactions
    group by user_id
)

select i.row_id,
       i.duration_time::float as duration_time,
       (((i.time // 60000) % 1440) / 60.0)::float as hour_of_day,
       u.user_duration_mean::float as user_duration_mean,
       (i.duration_time / greatest(u.user_duration_mean, 1))::float as duration_vs_user_mean,
       (i.duration_time = 0)::integer as is_still_picture
from raw_interactions as i
join user_duration as u using (user_id)
