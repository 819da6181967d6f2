-- The rows the model is fitted on and scores, in two setups that mirror each other.
--   setup 'validation': fit on train rows before the cut; score the train rows after the cut
--                       whose photo was never shown before it (cold-start photos, like test).
--   setup 'submission': fit on every train row; score the test rows.
-- Fit rows carry a fold (by photo) so label statistics can be computed out of fold; scored rows
-- have fold -1: their statistics come from all of that setup's fit rows, never from themselves.
-- The fold is a portable scramble of photo_id (a linear congruential step, taking its high bits):
-- plain integer arithmetic that DuckDB and Spark compute alike, unlike their hash() functions.
--
-- Where the log's photos do not arrive over time (a catalogue shown from the first hour), few
-- photos are first shown after the cut, and those are the rarely shown ones: a validation of a
-- few rows unlike the test's. When the cold rows after the cut are fewer than
-- validation_min_test_share of the test's rows, the validation also holds out the photos of fold
-- 0: their rows after the cut are scored and their rows before it leave the fit, so no scored
-- photo is ever seen by the fit (the validation's fit rows then have folds 1 and up).
--
-- grain: setup, row_id
-- variable: validation_hours = 12.0 | hours at the end of the training window scored for validation (the test window is 12 hours)
-- variable: folds = 5 | out-of-fold groups for label statistics, assigned by photo_id
-- variable: validation_min_test_share = 0.25 | below this many cold rows after the cut per test row, the validation also holds out the photos of fold 0
with train as (
    select row_id, user_id, photo_id, time,
           ((((abs(photo_id) % 2147483648) * 1103515245 + 12345) % 2147483648) // 65536 % getvariable('folds'))::integer
               as fold
    from raw_interactions
    where split = 'train'
),

cut as (
    select max(time) - cast(getvariable('validation_hours') * 3600000 as bigint) as cut_time
    from train
),

photos_before_cut as (
    select distinct photo_id
    from train, cut
    where time < cut.cut_time
),

cold_after_cut as (
    select train.*
    from train, cut
    where time >= cut.cut_time
      and photo_id not in (select photo_id from photos_before_cut)
),

hold_out as (
    select (select count(*) from cold_after_cut)
           < getvariable('validation_min_test_share') * (select count(*) from raw_interactions where split = 'test')
           as fold_zero
),

validation_fit as (
    select train.*
    from train, cut, hold_out
    where time < cut.cut_time
      and not (hold_out.fold_zero and train.fold = 0)
),

validation_scored as (
    select * from cold_after_cut
    union all
    select train.*
    from train, cut, hold_out
    where hold_out.fold_zero and train.fold = 0
      and time >= cut.cut_time
      and photo_id in (select photo_id from photos_before_cut)
)

select 'validation' as setup, 'fit' as role, row_id, user_id, photo_id, time, fold
from validation_fit
union all
select 'validation', 'scored', row_id, user_id, photo_id, time, -1
from validation_scored
union all
select 'submission', 'fit', row_id, user_id, photo_id, time, fold
from train
union all
select 'submission', 'scored', row_id, user_id, photo_id, time, -1
from raw_interactions
where split = 'test'
