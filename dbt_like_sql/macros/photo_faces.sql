{#-
  photo_faces(): one CTE, `photo_faces`, one row per photo_id of raw_faces (photos with at least one
  face): male_share (the faces' mean gender, 0 female to 1 male), age (their mean age), appearance
  (the best face's score), and the kind of face the cover shows on each: gender_kind (female: every
  face a woman; male: every face a man; both), age_kind (under_20, 20_30, over_30, from the mean
  age) and appearance_kind (high: the best face 70 or over; low). The one definition of a face kind
  for every model that reads the user's taste in faces; a photo without faces has no row (a model
  names that kind itself, such as 'none'). Ends with the comma before the next CTE.
-#}
{% macro photo_faces() -%}
photo_faces as (
    select photo_id, male_share, age, appearance,
           case when male_share = 0 then 'female' when male_share = 1 then 'male' else 'both' end as gender_kind,
           case when age < 20 then 'under_20' when age < 30 then '20_30' else 'over_30' end as age_kind,
           case when appearance >= 70 then 'high' else 'low' end as appearance_kind
    from (
        select photo_id, avg(gender) as male_share, avg(age) as age, max(appearance) as appearance
        from raw_faces
        group by photo_id
    ) as faces
),
{%- endmacro %}
