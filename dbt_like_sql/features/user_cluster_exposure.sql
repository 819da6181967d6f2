-- What the recommender believes the user likes, read off what it chose to show: of the user's
-- other impressions in the row's own log (train or test; the test log is given in full at
-- prediction time), the share whose photo is in the row's photo's visual cluster, at the coarsest
-- and the finest k (100 and 500 by default): over the six hours either side of the row's time
-- (where the user's interests are now) and over the whole log. The row itself is left out of
-- both counts; a share over no other impression is null. No labels.
--
-- grain: row_id
-- uses_scored_window_log: true
-- continuous: exposure_share_6h_coarse, exposure_share_6h_fine, exposure_share_log_coarse, exposure_share_log_fine
-- continuous: exposure_rows_6h
with {{ photo_clusters() }}

shown as (
    select i.row_id, i.split, i.user_id, i.time, p.coarse_cluster, p.fine_cluster
    from raw_interactions as i
    left join photo_clusters as p using (photo_id)
),

counted as (
    select row_id,
           count(*) over (partition by split, user_id order by time
                          range between 21600000 preceding and 21600000 following) - 1 as near,
           count(*) over (partition by split, user_id, coarse_cluster order by time
                          range between 21600000 preceding and 21600000 following) - 1 as near_coarse,
           count(*) over (partition by split, user_id, fine_cluster order by time
                          range between 21600000 preceding and 21600000 following) - 1 as near_fine,
           count(*) over (partition by split, user_id) - 1 as everywhere,
           count(*) over (partition by split, user_id, coarse_cluster) - 1 as everywhere_coarse,
           count(*) over (partition by split, user_id, fine_cluster) - 1 as everywhere_fine,
           coarse_cluster, fine_cluster
    from shown
)

select row_id,
       (case when near > 0 and coarse_cluster is not null then near_coarse / near end)::float as exposure_share_6h_coarse,
       (case when near > 0 and fine_cluster is not null then near_fine / near end)::float as exposure_share_6h_fine,
       (case when everywhere > 0 and coarse_cluster is not null then everywhere_coarse / everywhere end)::float
           as exposure_share_log_coarse,
       (case when everywhere > 0 and fine_cluster is not null then everywhere_fine / everywhere end)::float
           as exposure_share_log_fine,
       near::float as exposure_rows_6h
from counted
