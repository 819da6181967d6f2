-- Session context, read from the impression log (no labels): how the row's photo looks next to
-- what the same user was shown in the minutes around it. A feed that follows what the user is
-- after right now fills those minutes with covers alike, so a photo like its neighbours is one
-- the feed chose for the moment. Per row: the cosine between the photo's reduced visual vector
-- and the sum of the unit vectors of the user's other impressions in the row's own log (train
-- or test; the test log is given in full at prediction time) within 2 and 10 minutes either
-- side of the row's time. The row itself is left out; a window with no other impression, a sum
-- of zero or a photo whose vector is zero gives a null.
--
-- grain: row_id
-- uses_scored_window_log: true
-- continuous: session_cosine_2min, session_cosine_10min
{%- set dims = columns('pca_visual_features', 'pc_') %}
with
-- each photo's reduced vector at unit length (a zero vector stays zero)
unit as (
    select photo_id,
           {% for c in dims %}{{ c }} / greatest(length, 1e-12) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from (
        select photo_id,
               {% for c in dims %}cast({{ c }} as double) as {{ c }},
               {% endfor %}
               sqrt({% for c in dims %}cast({{ c }} as double) * cast({{ c }} as double){{ " + " if not loop.last }}{% endfor %}) as length
        from pca_visual_features
    ) as v
),

shown as (
    select i.row_id, i.split, i.user_id, i.time,
           {% for c in dims %}coalesce(u.{{ c }}, 0) as {{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from raw_interactions as i
    left join unit as u using (photo_id)
),

-- the sums over each window, the row's own vector taken out
windowed as (
    select row_id,
           (count(*) over near_2min) - 1 as rows_2min,
           (count(*) over near_10min) - 1 as rows_10min,
           {% for c in dims %}{{ c }},
           (sum({{ c }}) over near_2min) - {{ c }} as s2_{{ c }},
           (sum({{ c }}) over near_10min) - {{ c }} as s10_{{ c }}{{ "," if not loop.last }}
           {% endfor %}
    from shown
    window near_2min as (partition by split, user_id order by time range between 120000 preceding and 120000 following),
           near_10min as (partition by split, user_id order by time range between 600000 preceding and 600000 following)
),

products as (
    select row_id, rows_2min, rows_10min,
           ({% for c in dims %}{{ c }} * s2_{{ c }}{{ " + " if not loop.last }}{% endfor %}) as dot_2min,
           sqrt({% for c in dims %}s2_{{ c }} * s2_{{ c }}{{ " + " if not loop.last }}{% endfor %}) as length_2min,
           ({% for c in dims %}{{ c }} * s10_{{ c }}{{ " + " if not loop.last }}{% endfor %}) as dot_10min,
           sqrt({% for c in dims %}s10_{{ c }} * s10_{{ c }}{{ " + " if not loop.last }}{% endfor %}) as length_10min,
           ({% for c in dims %}{{ c }} * {{ c }}{{ " + " if not loop.last }}{% endfor %}) as own_length
    from windowed
)

select row_id,
       (case when rows_2min > 0 and length_2min > 1e-9 and own_length > 0.5
             then dot_2min / length_2min end)::float as session_cosine_2min,
       (case when rows_10min > 0 and length_10min > 1e-9 and own_length > 0.5
             then dot_10min / length_10min end)::float as session_cosine_10min
from products
