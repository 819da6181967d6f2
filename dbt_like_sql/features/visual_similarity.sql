-- Visual affinity: the cosine similarity between the photo's reduced visual vector and the
-- centroids of the photos the user clicked and did not click, and their difference. Label
-- statistics, out of fold (a fit row's centroids leave out its own fold).
--
-- grain: setup, row_id
-- continuous: visual_similarity_clicked, visual_similarity_unclicked, visual_similarity_margin
{%- set dims = columns('pca_visual_features', 'pc_') %}
with
-- Every vector is one row of its components as the PCA kept them (`columns` lists pc_00, pc_01,
-- ... as the table has them, however many), so each dot product and norm is one expression per
-- row: no row is repeated per component. A centroid is the sum of the user's unit vectors out of
-- fold: the setup's whole history minus the row's own fold (scored rows have fold -1, which has
-- no part). A centroid with no photo out of fold, or summing to zero, gives a null similarity.
vectors as (
    select photo_id,
           {% for c in dims %}cast({{ c }} as double) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from pca_visual_features
),

unit as (
    select photo_id,
           {% for c in dims %}{{ c }} / greatest(length, 1e-12) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from (
        select *, sqrt({% for c in dims %}{{ c }} * {{ c }}{{ " + " if not loop.last }}{% endfor %}) as length
        from vectors
    ) as v
),

-- each (fold, user, click) part's impressions of each photo, its count and its sum of unit vectors
photo_part as (
    select setup, fold, user_id, click, photo_id, count(*) as n
    from label_history
    group by all
),

sum_part as (
    select p.setup, p.fold, p.user_id, p.click, sum(p.n) as n,
           {% for c in dims %}sum(p.n * u.{{ c }}) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from photo_part as p
    join unit as u using (photo_id)
    group by p.setup, p.fold, p.user_id, p.click
),

sum_total as (
    select setup, user_id, click, sum(n) as n,
           {% for c in dims %}sum({{ c }}) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from sum_part
    group by setup, user_id, click
),

folds as (
    select distinct setup, fold from model_rows
),

-- the (fold, user, click) centroids out of fold that have at least one photo
centroid as (
    select t.setup, f.fold, t.user_id, t.click,
           {% for c in dims %}t.{{ c }} - coalesce(p.{{ c }}, 0) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from sum_total as t
    join folds as f on f.setup = t.setup
    left join sum_part as p
        on p.setup = t.setup and p.fold = f.fold and p.user_id = t.user_id and p.click = t.click
    where t.n > coalesce(p.n, 0)
),

centroid_length as (
    select *, sqrt({% for c in dims %}{{ c }} * {{ c }}{{ " + " if not loop.last }}{% endfor %}) as length
    from centroid
),

-- each row's cosine with its user's clicked and unclicked centroids (a row per centroid it has)
cosine as (
    -- broadcast the centroids: their table is small, the joined rows wide (every PCA component)
    select /*+ BROADCAST(k) */ r.setup, r.row_id, k.click,
           ({% for c in dims %}u.{{ c }} * k.{{ c }}{{ " + " if not loop.last }}{% endfor %}) / nullif(k.length, 0) as cosine
    from model_rows as r
    join unit as u on u.photo_id = r.photo_id
    join centroid_length as k on k.setup = r.setup and k.fold = r.fold and k.user_id = r.user_id
),

pair as (
    select r.setup, r.row_id,
           max(case when c.click = 1 then c.cosine end) as clicked,
           max(case when c.click = 0 then c.cosine end) as unclicked
    from model_rows as r
    left join cosine as c on c.setup = r.setup and c.row_id = r.row_id
    group by r.setup, r.row_id
)

select setup, row_id,
       cast(clicked as float) as visual_similarity_clicked,
       cast(unclicked as float) as visual_similarity_unclicked,
       cast(clicked - unclicked as float) as visual_similarity_margin
from pair
