-- The user's taste in the kind of face on this row's cover: the user's click rate on covers whose
-- faces are of the same kind as this photo's, by gender (no face, women only, men only, both),
-- by age band (no face, under 20, 20 to 30, 30 and over, from the faces' mean age), by
-- appearance (no face, the best face under 70, 70 and over), and by all three at once; each
-- smoothed toward the user's own rate (10 pseudo-impressions at (clicks + 2) / (impressions + 10),
-- as in user_face_preference), and its lift over that rate. user_face_preference holds the
-- user's rates for every kind; this reads the one that matches the row's photo, so a model need
-- not pair them. Label statistics, out of fold.
--
-- grain: setup, row_id
-- continuous: face_match_rate_gender, face_match_lift_gender, face_match_rate_age, face_match_lift_age
-- continuous: face_match_rate_appearance, face_match_lift_appearance, face_match_rate_kind, face_match_lift_kind
with {{ photo_faces() }}

-- the kind of face every photo of model_rows shows, per dimension ('none' without faces)
photo_kind as (
    select photo_id, gender_kind, age_kind, appearance_kind,
           gender_kind || '/' || age_kind || '/' || appearance_kind as all_kind
    from (
        select r.photo_id,
               coalesce(f.gender_kind, 'none') as gender_kind,
               coalesce(f.age_kind, 'none') as age_kind,
               coalesce(f.appearance_kind, 'none') as appearance_kind
        from (select distinct photo_id from model_rows) as r
        left join photo_faces as f using (photo_id)
    ) as k
),

history as (
    select h.setup, h.fold, h.user_id, h.click, k.gender_kind, k.age_kind, k.appearance_kind, k.all_kind
    from label_history as h
    join photo_kind as k using (photo_id)
),

-- one row per (setup, fold, user, dimension, kind)
per_fold as (  -- (explicit groups: beside the unnamed 'all' below, Spark reads `group by all` as grouping by it)
    select setup, fold, user_id, 'gender' as dimension, gender_kind as kind, count(*) as n, sum(click) as clicks
    from history group by setup, fold, user_id, gender_kind
    union all
    select setup, fold, user_id, 'age', age_kind, count(*), sum(click)
    from history group by setup, fold, user_id, age_kind
    union all
    select setup, fold, user_id, 'appearance', appearance_kind, count(*), sum(click)
    from history group by setup, fold, user_id, appearance_kind
    union all
    select setup, fold, user_id, 'all', all_kind, count(*), sum(click)
    from history group by setup, fold, user_id, all_kind
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['user_id', 'dimension', 'kind'], ['n', 'clicks']) }}
),

user_prior as (
    select setup, fold, user_id, (sum(clicks) + 2) / (sum(n) + 10) as prior
    from out_of_fold
    where dimension = 'gender'  -- every impression has exactly one gender kind
    group by setup, fold, user_id
),

row_kind as (
    select r.setup, r.fold, r.row_id, r.user_id, k.gender_kind, k.age_kind, k.appearance_kind, k.all_kind,
           u.prior
    from model_rows as r
    join photo_kind as k using (photo_id)
    left join user_prior as u on u.setup = r.setup and u.fold = r.fold and u.user_id = r.user_id
),

matched as (
    select r.setup, r.row_id, r.prior,
           (coalesce(g.clicks, 0) + 10 * r.prior) / (coalesce(g.n, 0) + 10) as rate_gender,
           (coalesce(a.clicks, 0) + 10 * r.prior) / (coalesce(a.n, 0) + 10) as rate_age,
           (coalesce(p.clicks, 0) + 10 * r.prior) / (coalesce(p.n, 0) + 10) as rate_appearance,
           (coalesce(k.clicks, 0) + 10 * r.prior) / (coalesce(k.n, 0) + 10) as rate_kind
    from row_kind as r
    left join out_of_fold as g on g.setup = r.setup and g.fold = r.fold and g.user_id = r.user_id
        and g.dimension = 'gender' and g.kind = r.gender_kind
    left join out_of_fold as a on a.setup = r.setup and a.fold = r.fold and a.user_id = r.user_id
        and a.dimension = 'age' and a.kind = r.age_kind
    left join out_of_fold as p on p.setup = r.setup and p.fold = r.fold and p.user_id = r.user_id
        and p.dimension = 'appearance' and p.kind = r.appearance_kind
    left join out_of_fold as k on k.setup = r.setup and k.fold = r.fold and k.user_id = r.user_id
        and k.dimension = 'all' and k.kind = r.all_kind
)

select setup, row_id,
       rate_gender::float as face_match_rate_gender, (rate_gender - prior)::float as face_match_lift_gender,
       rate_age::float as face_match_rate_age, (rate_age - prior)::float as face_match_lift_age,
       rate_appearance::float as face_match_rate_appearance,
       (rate_appearance - prior)::float as face_match_lift_appearance,
       rate_kind::float as face_match_rate_kind, (rate_kind - prior)::float as face_match_lift_kind
from matched
