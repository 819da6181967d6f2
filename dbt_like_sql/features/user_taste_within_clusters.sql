-- The user's taste in what a cover shows beyond its content, measured inside the user's clusters.
-- Faces, words and durations differ by kind of content, so a user's raw click rate on covers with
-- words (user_attribute_taste) mixes their taste in words with their taste in the clusters whose
-- covers carry words. Here each attribute's slope is read inside each (user, coarse cluster) cell
-- and pooled over the user's cells: a fixed-effects regression of click on the attribute, click
-- and attribute centred on the cell's own means.
--
-- Attributes: has_face (0 or 1), has_text (0 or 1), log_duration (ln(1 + duration_time)), and on
-- covers with faces only, male_share (the faces' mean gender) and appearance (the best face's
-- score). Per user: within_cluster_slope_<attribute> = (S_xy + w b) / (S_xx + w), where S_xy and
-- S_xx are the user's within-cell cross and square sums, b the population's pooled within-cell
-- slope S_xy / S_xx over every user, and w 30 rows' worth of the population's within-cell
-- variance (30 S_xx / rows; the face attributes: rows with faces, and their means and cells over
-- those rows alone). A user without rows takes b; an attribute without within-cell
-- variance anywhere has no slope. within_cluster_taste_score sums, over the attributes the row's
-- photo has, (the user's slope - b) x (the row's attribute - its population mean): the user's
-- own tilt for this photo beyond what the population's slope gives every user. A user's photos
-- without a coarse cluster form one cell of their own. Label statistics, out of fold.
--
-- grain: setup, row_id
-- continuous: within_cluster_slope_has_face, within_cluster_slope_has_text
-- continuous: within_cluster_slope_log_duration, within_cluster_slope_male_share
-- continuous: within_cluster_slope_appearance, within_cluster_taste_score
with {{ photo_faces() }}

{{ photo_clusters() }}

history as (
    select h.setup, h.fold, h.user_id, coalesce(c.coarse_cluster, -1) as cluster, h.click::double as y,
           case when f.photo_id is null then 0.0 else 1.0 end as has_face,
           case when coalesce(t.n_words, 0) > 0 then 1.0 else 0.0 end as has_text,
           ln(1 + h.duration_time) as log_duration,
           coalesce(f.male_share, 0)::double as male_share,
           coalesce(f.appearance, 0)::double as appearance
    from label_history as h
    left join photo_clusters as c using (photo_id)
    left join photo_faces as f using (photo_id)
    left join raw_text as t using (photo_id)
),

-- one row per (setup, fold, user, cluster): the sums each within-cell moment needs (a 0/1
-- attribute is its own square: n_face is the sum and the square sum of has_face, sxy_has_face the
-- clicks on covers with faces, and sx_has_text the sum and the square sum of has_text)
per_fold as (
    select setup, fold, user_id, cluster,
           count(*) as n, sum(y) as sy,
           sum(has_face) as n_face, sum(has_face * y) as sxy_has_face,
           sum(has_text) as sx_has_text, sum(has_text * y) as sxy_has_text,
           sum(log_duration) as sx_log_duration, sum(log_duration * y) as sxy_log_duration,
           sum(log_duration * log_duration) as sxx_log_duration,
           sum(male_share) as sx_male_share, sum(male_share * y) as sxy_male_share,
           sum(male_share * male_share) as sxx_male_share,
           sum(appearance) as sx_appearance, sum(appearance * y) as sxy_appearance,
           sum(appearance * appearance) as sxx_appearance
    from history
    group by setup, fold, user_id, cluster
),

out_of_fold as (
    {{ out_of_fold('per_fold', ['user_id', 'cluster'],
                   ['n', 'sy', 'n_face', 'sxy_has_face', 'sx_has_text', 'sxy_has_text',
                    'sx_log_duration', 'sxy_log_duration', 'sxx_log_duration',
                    'sx_male_share', 'sxy_male_share', 'sxx_male_share',
                    'sx_appearance', 'sxy_appearance', 'sxx_appearance']) }}
),

-- each cell's centred moments (the face attributes over the cell's covers with faces)
cells as (
    select setup, fold, user_id, n, n_face, sx_has_text, sx_log_duration, sx_male_share, sx_appearance,
           sxy_has_face - n_face * sy / n as cxy_has_face,
           greatest(n_face - n_face * n_face / n, 0) as cxx_has_face,
           sxy_has_text - sx_has_text * sy / n as cxy_has_text,
           greatest(sx_has_text - sx_has_text * sx_has_text / n, 0) as cxx_has_text,
           sxy_log_duration - sx_log_duration * sy / n as cxy_log_duration,
           greatest(sxx_log_duration - sx_log_duration * sx_log_duration / n, 0) as cxx_log_duration,
           case when n_face > 0 then sxy_male_share - sx_male_share * sxy_has_face / n_face else 0 end as cxy_male_share,
           case when n_face > 0 then greatest(sxx_male_share - sx_male_share * sx_male_share / n_face, 0) else 0 end
               as cxx_male_share,
           case when n_face > 0 then sxy_appearance - sx_appearance * sxy_has_face / n_face else 0 end as cxy_appearance,
           case when n_face > 0 then greatest(sxx_appearance - sx_appearance * sx_appearance / n_face, 0) else 0 end
               as cxx_appearance
    from out_of_fold
),

users as (
    select setup, fold, user_id,
           sum(cxy_has_face) as cxy_has_face, sum(cxx_has_face) as cxx_has_face,
           sum(cxy_has_text) as cxy_has_text, sum(cxx_has_text) as cxx_has_text,
           sum(cxy_log_duration) as cxy_log_duration, sum(cxx_log_duration) as cxx_log_duration,
           sum(cxy_male_share) as cxy_male_share, sum(cxx_male_share) as cxx_male_share,
           sum(cxy_appearance) as cxy_appearance, sum(cxx_appearance) as cxx_appearance
    from cells
    group by setup, fold, user_id
),

-- per (setup, fold): the population's pooled slope b, its prior weight w and each attribute's mean
population as (
    select setup, fold,
           sum(cxy_has_face) / nullif(sum(cxx_has_face), 0) as b_has_face,
           30 * sum(cxx_has_face) / sum(n) as w_has_face, sum(n_face) / sum(n) as mean_has_face,
           sum(cxy_has_text) / nullif(sum(cxx_has_text), 0) as b_has_text,
           30 * sum(cxx_has_text) / sum(n) as w_has_text, sum(sx_has_text) / sum(n) as mean_has_text,
           sum(cxy_log_duration) / nullif(sum(cxx_log_duration), 0) as b_log_duration,
           30 * sum(cxx_log_duration) / sum(n) as w_log_duration, sum(sx_log_duration) / sum(n) as mean_log_duration,
           sum(cxy_male_share) / nullif(sum(cxx_male_share), 0) as b_male_share,
           30 * sum(cxx_male_share) / nullif(sum(n_face), 0) as w_male_share,
           sum(sx_male_share) / nullif(sum(n_face), 0) as mean_male_share,
           sum(cxy_appearance) / nullif(sum(cxx_appearance), 0) as b_appearance,
           30 * sum(cxx_appearance) / nullif(sum(n_face), 0) as w_appearance,
           sum(sx_appearance) / nullif(sum(n_face), 0) as mean_appearance
    from cells
    group by setup, fold
),

slopes as (
    select r.setup, r.fold, r.user_id,
           p.b_has_face, p.mean_has_face, p.b_has_text, p.mean_has_text, p.b_log_duration, p.mean_log_duration,
           p.b_male_share, p.mean_male_share, p.b_appearance, p.mean_appearance,
           (coalesce(u.cxy_has_face, 0) + p.w_has_face * p.b_has_face) / (coalesce(u.cxx_has_face, 0) + p.w_has_face)
               as slope_has_face,
           (coalesce(u.cxy_has_text, 0) + p.w_has_text * p.b_has_text) / (coalesce(u.cxx_has_text, 0) + p.w_has_text)
               as slope_has_text,
           (coalesce(u.cxy_log_duration, 0) + p.w_log_duration * p.b_log_duration)
               / (coalesce(u.cxx_log_duration, 0) + p.w_log_duration) as slope_log_duration,
           (coalesce(u.cxy_male_share, 0) + p.w_male_share * p.b_male_share)
               / (coalesce(u.cxx_male_share, 0) + p.w_male_share) as slope_male_share,
           (coalesce(u.cxy_appearance, 0) + p.w_appearance * p.b_appearance)
               / (coalesce(u.cxx_appearance, 0) + p.w_appearance) as slope_appearance,
           -- slope - b, in the form that is exactly 0 for a user without within-cell variance (the
           -- difference of the two would leave the rounding of b, which varies with the order in
           -- which the parallel sums add up)
           (coalesce(u.cxy_has_face, 0) - coalesce(u.cxx_has_face, 0) * p.b_has_face)
               / (coalesce(u.cxx_has_face, 0) + p.w_has_face) as tilt_has_face,
           (coalesce(u.cxy_has_text, 0) - coalesce(u.cxx_has_text, 0) * p.b_has_text)
               / (coalesce(u.cxx_has_text, 0) + p.w_has_text) as tilt_has_text,
           (coalesce(u.cxy_log_duration, 0) - coalesce(u.cxx_log_duration, 0) * p.b_log_duration)
               / (coalesce(u.cxx_log_duration, 0) + p.w_log_duration) as tilt_log_duration,
           (coalesce(u.cxy_male_share, 0) - coalesce(u.cxx_male_share, 0) * p.b_male_share)
               / (coalesce(u.cxx_male_share, 0) + p.w_male_share) as tilt_male_share,
           (coalesce(u.cxy_appearance, 0) - coalesce(u.cxx_appearance, 0) * p.b_appearance)
               / (coalesce(u.cxx_appearance, 0) + p.w_appearance) as tilt_appearance
    from (select distinct setup, fold, user_id from model_rows) as r
    join population as p using (setup, fold)
    left join users as u on u.setup = r.setup and u.fold = r.fold and u.user_id = r.user_id
    -- (the users come from model_rows, so that one without visible rows gets b)
),

scored as (
    select r.setup, r.row_id,
           s.slope_has_face, s.slope_has_text, s.slope_log_duration, s.slope_male_share, s.slope_appearance,
           s.tilt_has_face, s.tilt_has_text, s.tilt_log_duration, s.tilt_male_share, s.tilt_appearance,
           s.mean_has_face, s.mean_has_text, s.mean_log_duration, s.mean_male_share, s.mean_appearance,
           case when f.photo_id is null then 0.0 else 1.0 end as has_face,
           case when coalesce(t.n_words, 0) > 0 then 1.0 else 0.0 end as has_text,
           ln(1 + i.duration_time) as log_duration,
           f.male_share::double as male_share, f.appearance::double as appearance
    from model_rows as r
    join raw_interactions as i using (row_id)
    left join slopes as s on s.setup = r.setup and s.fold = r.fold and s.user_id = r.user_id
    left join photo_faces as f on f.photo_id = r.photo_id
    left join raw_text as t on t.photo_id = r.photo_id
)

select setup, row_id,
       slope_has_face::float as within_cluster_slope_has_face,
       slope_has_text::float as within_cluster_slope_has_text,
       slope_log_duration::float as within_cluster_slope_log_duration,
       slope_male_share::float as within_cluster_slope_male_share,
       slope_appearance::float as within_cluster_slope_appearance,
       (coalesce(tilt_has_face * (has_face - mean_has_face), 0)
        + coalesce(tilt_has_text * (has_text - mean_has_text), 0)
        + coalesce(tilt_log_duration * (log_duration - mean_log_duration), 0)
        + coalesce(tilt_male_share * (male_share - mean_male_share), 0)
        + coalesce(tilt_appearance * (appearance - mean_appearance), 0))::float
           as within_cluster_taste_score
from scored
