-- Faces on the cover: how many, how much of the cover they take, gender mix, age and appearance.
-- Only works with a detected face have rows in the released files; every other work gets
-- face_count 0 and nulls elsewhere.
--
-- grain: photo_id
-- continuous: face_count, face_share_total, face_share_max, face_male_share
-- continuous: face_age_mean, face_age_min, face_age_max, face_appearance_mean, face_appearance_max
-- discrete: face_gender_mix
with photos as (
    select distinct photo_id from raw_interactions
),

per_photo as (
    select photo_id,
           count(*) as face_count,
           sum(share) as face_share_total,
           max(share) as face_share_max,
           avg(gender) as face_male_share,
           avg(age) as face_age_mean,
           min(age) as face_age_min,
           max(age) as face_age_max,
           avg(appearance) as face_appearance_mean,
           max(appearance) as face_appearance_max
    from raw_faces
    group by photo_id
)

select p.photo_id,
       coalesce(f.face_count, 0)::float as face_count,
       coalesce(f.face_share_total, 0)::float as face_share_total,
       f.face_share_max::float as face_share_max,
       f.face_male_share::float as face_male_share,
       f.face_age_mean::float as face_age_mean,
       f.face_age_min::float as face_age_min,
       f.face_age_max::float as face_age_max,
       f.face_appearance_mean::float as face_appearance_mean,
       f.face_appearance_max::float as face_appearance_max,
       -- 0 no face, 1 only women, 2 only men, 3 both
       (case when f.face_count is null then 0
             when f.face_male_share = 0 then 1
             when f.face_male_share = 1 then 2
             else 3 end)::integer as face_gender_mix
from photos as p
left join per_photo as f using (photo_id)
