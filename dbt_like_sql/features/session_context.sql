-- Session context, read from the impression log (no labels): how the row's photo looks next to
-- what the same user was shown in the minutes around it, before it and after it. A feed that
-- follows what the user is after right now fills those minutes with covers alike, so a photo like
-- its neighbours is one the feed chose for the moment; a feed that reacts to a click shows covers
-- like the clicked one in the minutes after it. Per row and window: the cosine between the photo's
-- reduced visual vector and the sum of the unit vectors of the user's other impressions in the
-- row's own log (train or test; the test log is given in full at prediction time). Windows: 2 and
-- 10 minutes either side of the row's time (the row itself left out, rows at the same time in),
-- and 2 and 10 minutes strictly before and strictly after it. A window with no other
-- impression, a sum of zero or a photo whose vector is zero gives a null.
--
-- grain: row_id
-- uses_scored_window_log: true
-- continuous: session_cosine_2min, session_cosine_10min, session_cosine_before_2min, session_cosine_before_10min, session_cosine_after_2min, session_cosine_after_10min
{%- set dims = columns('pca_visual_features', 'pc_') %}
{#- (name, frame, whether the frame holds the row itself) -#}
{%- set windows = [
    ('2min', 'range between 120000 preceding and 120000 following', true),
    ('10min', 'range between 600000 preceding and 600000 following', true),
    ('before_2min', 'range between 120000 preceding and 1 preceding', false),
    ('before_10min', 'range between 600000 preceding and 1 preceding', false),
    ('after_2min', 'range between 1 following and 120000 following', false),
    ('after_10min', 'range between 1 following and 600000 following', false),
] %}
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

-- the sums over each window (the row's own vector taken out of the windows that hold it); a
-- window over no row sums to null, which the coalesce makes zero
windowed as (
    select row_id,
           {% for c in dims %}{{ c }},
           {% endfor %}
           {% for name, frame, holds_row in windows %}
           (count(*) over w_{{ name }}){{ " - 1" if holds_row }} as rows_{{ name }},
           {% for c in dims %}coalesce(sum({{ c }}) over w_{{ name }}, 0){{ " - " ~ c if holds_row }} as s_{{ name }}_{{ c }}{{ "," if not loop.last }}
           {% endfor %}{{ "," if not loop.last }}
           {% endfor %}
    from shown
    window {% for name, frame, holds_row in windows %}w_{{ name }} as (partition by split, user_id order by time {{ frame }}){{ "," if not loop.last }}
           {% endfor %}
),

products as (
    select row_id,
           ({% for c in dims %}{{ c }} * {{ c }}{{ " + " if not loop.last }}{% endfor %}) as own_length,
           {% for name, frame, holds_row in windows %}
           rows_{{ name }},
           ({% for c in dims %}{{ c }} * s_{{ name }}_{{ c }}{{ " + " if not loop.last }}{% endfor %}) as dot_{{ name }},
           sqrt({% for c in dims %}s_{{ name }}_{{ c }} * s_{{ name }}_{{ c }}{{ " + " if not loop.last }}{% endfor %}) as length_{{ name }}{{ "," if not loop.last }}
           {% endfor %}
    from windowed
)

select row_id,
       {% for name, frame, holds_row in windows %}
       (case when rows_{{ name }} > 0 and length_{{ name }} > 1e-9 and own_length > 0.5
             then dot_{{ name }} / length_{{ name }} end)::float as session_cosine_{{ name }}{{ "," if not loop.last }}
       {% endfor %}
from products
