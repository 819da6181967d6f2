-- The user's taste in faces: click rate on covers with and without faces, by gender, by age band
-- and for high appearance scores, each smoothed toward the user's own click rate (10
-- pseudo-impressions). Label statistics, out of fold.
--
-- grain: setup, fold, user_id
-- continuous: user_click_rate_with_face, user_click_rate_without_face, user_face_click_lift
-- continuous: user_click_rate_female_face, user_click_rate_male_face
-- continuous: user_click_rate_face_under_20, user_click_rate_face_20_30, user_click_rate_face_over_30
-- continuous: user_click_rate_attractive_face
with {{ photo_faces() }}

history as (
    select h.setup, h.fold, h.user_id, h.click,
           f.photo_id is not null as has_face,
           f.gender_kind = 'female' as female_only,
           f.gender_kind = 'male' as male_only,
           f.age_kind = 'under_20' as age_under_20,
           f.age_kind = '20_30' as age_20_30,
           f.age_kind = 'over_30' as age_over_30,
           f.appearance_kind = 'high' as attractive
    from label_history as h
    left join photo_faces as f using (photo_id)
),

per_fold as (
    select setup, fold, user_id,
           count(*) as n, sum(click) as clicks,
           count(*) filter (where has_face) as n_face,
           coalesce(sum(click) filter (where has_face), 0) as clicks_face,
           count(*) filter (where female_only) as n_female,
           coalesce(sum(click) filter (where female_only), 0) as clicks_female,
           count(*) filter (where male_only) as n_male,
           coalesce(sum(click) filter (where male_only), 0) as clicks_male,
           count(*) filter (where age_under_20) as n_under_20,
           coalesce(sum(click) filter (where age_under_20), 0) as clicks_under_20,
           count(*) filter (where age_20_30) as n_20_30,
           coalesce(sum(click) filter (where age_20_30), 0) as clicks_20_30,
           count(*) filter (where age_over_30) as n_over_30,
           coalesce(sum(click) filter (where age_over_30), 0) as clicks_over_30,
           count(*) filter (where attractive) as n_attractive,
           coalesce(sum(click) filter (where attractive), 0) as clicks_attractive
    from history
    group by all
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['user_id'],
                   ['n', 'clicks', 'n_face', 'clicks_face', 'n_female', 'clicks_female', 'n_male', 'clicks_male',
                    'n_under_20', 'clicks_under_20', 'n_20_30', 'clicks_20_30', 'n_over_30', 'clicks_over_30',
                    'n_attractive', 'clicks_attractive']) }}
),

with_prior as (
    select *, (clicks + 2) / (n + 10) as prior from out_of_fold
)

select setup, fold, user_id,
       ((clicks_face + 10 * prior) / (n_face + 10))::float as user_click_rate_with_face,
       ((clicks - clicks_face + 10 * prior) / (n - n_face + 10))::float as user_click_rate_without_face,
       ((clicks_face + 10 * prior) / (n_face + 10) - (clicks - clicks_face + 10 * prior) / (n - n_face + 10))::float
           as user_face_click_lift,
       ((clicks_female + 10 * prior) / (n_female + 10))::float as user_click_rate_female_face,
       ((clicks_male + 10 * prior) / (n_male + 10))::float as user_click_rate_male_face,
       ((clicks_under_20 + 10 * prior) / (n_under_20 + 10))::float as user_click_rate_face_under_20,
       ((clicks_20_30 + 10 * prior) / (n_20_30 + 10))::float as user_click_rate_face_20_30,
       ((clicks_over_30 + 10 * prior) / (n_over_30 + 10))::float as user_click_rate_face_over_30,
       ((clicks_attractive + 10 * prior) / (n_attractive + 10))::float as user_click_rate_attractive_face
from with_prior
