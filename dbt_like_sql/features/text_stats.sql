-- Cover text: whether the cover has words, how many, and how common they are across all works
-- (train and test; no labels). The released `0` convention is resolved in raw_text: a cover with
-- no text has an empty word list.
--
-- grain: photo_id
-- continuous: n_words, word_frequency_mean, word_frequency_min, word_frequency_max, rare_word_share
-- discrete: has_text
with words as (
    select photo_id, unnest(words) as word_id
    from raw_text
),

document_frequency as (
    select word_id, count(distinct photo_id) as photos
    from words
    group by word_id
),

per_photo as (
    select w.photo_id,
           avg(ln(d.photos)) as word_frequency_mean,
           min(ln(d.photos)) as word_frequency_min,
           max(ln(d.photos)) as word_frequency_max,
           avg((d.photos < 5)::integer) as rare_word_share
    from words as w
    join document_frequency as d using (word_id)
    group by w.photo_id
)

select t.photo_id,
       (t.n_words > 0)::integer as has_text,
       t.n_words::float as n_words,
       p.word_frequency_mean::float as word_frequency_mean,
       p.word_frequency_min::float as word_frequency_min,
       p.word_frequency_max::float as word_frequency_max,
       p.rare_word_share::float as rare_word_share
from raw_text as t
left join per_photo as p using (photo_id)
