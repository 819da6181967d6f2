-- Visual affinity: the cosine similarity between the photo's reduced visual vector and the
-- centroids of the photos the user clicked and did not click, and their difference. Label
-- statistics, out of fold (a fit row's centroids leave out its own fold).
--
-- grain: setup, row_id
-- continuous: visual_similarity_clicked, visual_similarity_unclicked, visual_similarity_margin
with
-- The vectors in long form (photo_id, dim, value), one row per component, so every dot product
-- and norm is a sum over dims whatever the number of components (`columns` lists the PCA's
-- pc_00, pc_01, ... as the table has them). A centroid is the sum of the user's unit vectors out
-- of fold: the setup's whole history minus the row's own fold (scored rows have fold -1, which has
-- no part). A centroid with no photo out of fold, or summing to zero, gives a null similarity.
vectors as (
{%- for column in columns('pca_visual_features', 'pc_') %}
    select photo_id, {{ loop.index0 }} as dim, cast({{ column }} as double) as value from pca_visual_features
    {{- "\n    union all" if not loop.last }}
{%- endfor %}
),

lengths as (
    select photo_id, sqrt(sum(value * value)) as length
    from vectors
    group by photo_id
),

unit as (
    select v.photo_id, v.dim, v.value / greatest(l.length, 1e-12) as value
    from vectors as v
    join lengths as l using (photo_id)
),

-- each (fold, user, click) part's impressions of each photo, then its sum of unit vectors
photo_part as (
    select setup, fold, user_id, click, photo_id, count(*) as n
    from label_history
    group by all
),

count_part as (
    select setup, fold, user_id, click, sum(n) as n
    from photo_part
    group by all
),

sum_part as (
    select p.setup, p.fold, p.user_id, p.click, u.dim, sum(p.n * u.value) as total
    from photo_part as p
    join unit as u using (photo_id)
    group by all
),

count_total as (
    select setup, user_id, click, sum(n) as n
    from count_part
    group by all
),

sum_total as (
    select setup, user_id, click, dim, sum(total) as total
    from sum_part
    group by all
),

folds as (
    select distinct setup, fold from model_rows
),

-- the (fold, user, click) centroids out of fold that have at least one photo
count_out as (
    select t.setup, f.fold, t.user_id, t.click
    from count_total as t
    join folds as f on f.setup = t.setup
    left join count_part as p
        on p.setup = t.setup and p.fold = f.fold and p.user_id = t.user_id and p.click = t.click
    where t.n > coalesce(p.n, 0)
),

centroid as (
    select c.setup, c.fold, c.user_id, c.click, t.dim, t.total - coalesce(p.total, 0) as total
    from count_out as c
    join sum_total as t on t.setup = c.setup and t.user_id = c.user_id and t.click = c.click
    left join sum_part as p
        on p.setup = c.setup and p.fold = c.fold and p.user_id = c.user_id and p.click = c.click and p.dim = t.dim
),

centroid_length as (
    select setup, fold, user_id, click, sqrt(sum(total * total)) as length
    from centroid
    group by all
),

similarity as (
    select r.setup, r.row_id, c.click,
           sum(u.value * c.total) / nullif(max(l.length), 0) as cosine
    from model_rows as r
    join unit as u on u.photo_id = r.photo_id
    join centroid as c on c.setup = r.setup and c.fold = r.fold and c.user_id = r.user_id and c.dim = u.dim
    join centroid_length as l
        on l.setup = c.setup and l.fold = c.fold and l.user_id = c.user_id and l.click = c.click
    group by r.setup, r.row_id, c.click
),

pair as (
    select r.setup, r.row_id,
           max(case when s.click = 1 then s.cosine end) as clicked,
           max(case when s.click = 0 then s.cosine end) as unclicked
    from model_rows as r
    left join similarity as s on s.setup = r.setup and s.row_id = r.row_id
    group by r.setup, r.row_id
)

select setup, row_id,
       cast(clicked as float) as visual_similarity_clicked,
       cast(unclicked as float) as visual_similarity_unclicked,
       cast(clicked - unclicked as float) as visual_similarity_margin
from pair
