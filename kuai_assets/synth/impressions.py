"""Turning the latent world into impression logs: batches, sessions, clicks, times.

Generated one block of users at a time, so memory is bounded by the block, not the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kuai_assets.synth.world import (
    EXPOSURE_HALF_LIFE_HOURS,
    EXPOSURE_LIFETIME_HOURS,
    HOUR_MS,
    POPULARITY_SIGMA,
    SLOT_HOURS,
    TEST_HOURS,
    TRAIN_HOURS,
    Photos,
    Users,
    World,
    WORLDS,
)

TARGET_CLICK_RATE = 0.2023
PERSONALISED_SHARE = 0.55  # share of impressions the recommender picks from the user's interests
DAY_OFFSET_HOURS = 7.0  # the anonymised clock starts at 7 in the morning
# click-blind timeline: mean seconds added to every pause in place of what was watched (about the
# demo's mean watched seconds per batch, so the pace of sessions stays comparable)
BLIND_WATCH_SECONDS = 8.0


@dataclass(frozen=True)
class Period:
    name: str  # "train" or "test"
    start_hour: float
    end_hour: float

    @property
    def slots(self) -> np.ndarray:
        return np.arange(int(self.start_hour // SLOT_HOURS), int(np.ceil(self.end_hour / SLOT_HOURS)))


class ExposureSampler:
    """Draws photos for impressions in a time slot and topic, in proportion to popularity x decay.

    All (slot, topic) segments share one flat cumulative-weight array, so a million draws with
    different segments are one `searchsorted`.
    """

    def __init__(self, photos: Photos, period: Period, n_topics: int):
        order = np.argsort(photos.topic, kind="stable")
        slots = period.slots
        self.first_slot = int(slots[0])
        n_slots = len(slots)
        self.cum_before = np.zeros((n_slots, n_topics))
        self.cum_after = np.zeros((n_slots, n_topics))
        self.entry_first = np.zeros((n_slots, n_topics), dtype=np.int64)
        self.entry_last = np.zeros((n_slots, n_topics), dtype=np.int64)
        entries, cums = [], []
        running, offset = 0.0, 0
        publish = photos.publish_hour[order]
        for j, slot in enumerate(slots):
            start, end = slot * SLOT_HOURS, (slot + 1) * SLOT_HOURS
            alive = (publish < end) & (start - publish < EXPOSURE_LIFETIME_HOURS)
            idx = order[alive]
            age = np.maximum((start + end) / 2 - photos.publish_hour[idx], 0.0)
            weight = photos.popularity[idx] * np.exp2(-age / EXPOSURE_HALF_LIFE_HOURS)
            cum = np.cumsum(weight, dtype=np.float64) + running
            bounds = np.searchsorted(photos.topic[idx], np.arange(n_topics + 1))
            for t in range(n_topics):
                a, b = bounds[t], bounds[t + 1]
                self.cum_before[j, t] = cum[a - 1] if a > 0 else running
                self.cum_after[j, t] = cum[b - 1] if b > a else self.cum_before[j, t]
                self.entry_first[j, t] = offset + a
                self.entry_last[j, t] = offset + max(b - 1, a)
            entries.append(idx.astype(np.int32))
            cums.append(cum)
            running = float(cum[-1]) if len(cum) else running
            offset += len(idx)
        self.entries = np.concatenate(entries)
        self.cum = np.concatenate(cums)
        totals = self.cum_after - self.cum_before
        if (totals.sum(axis=1) <= 0).any():
            raise ValueError(f"{period.name}: a time slot has no photo to show; the pool is too small")
        self.topic_totals = totals
        self.topic_cdf = np.cumsum(totals, axis=1) / totals.sum(axis=1, keepdims=True)

    def global_topics(self, slot_j: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return categorical_rows(self.topic_cdf, slot_j, rng)

    def draw(self, slot_j: np.ndarray, topic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo = self.cum_before[slot_j, topic]
        hi = self.cum_after[slot_j, topic]
        pos = np.searchsorted(self.cum, lo + rng.random(len(lo)) * (hi - lo), side="left")
        pos = np.clip(pos, self.entry_first[slot_j, topic], self.entry_last[slot_j, topic])
        return self.entries[pos]


def categorical_rows(cdf: np.ndarray, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per element, from the distribution in row `row[i]` of a (R, K) CDF."""
    n_rows, k = cdf.shape
    flat = (cdf + np.arange(n_rows)[:, None]).ravel()
    draws = row + rng.random(len(row)) * (1 - 1e-12)
    return np.minimum(np.searchsorted(flat, draws, side="right") - row * k, k - 1)


def _segment_starts(new: np.ndarray) -> np.ndarray:
    """For each element, the index of the start of its segment (segments begin where new is True)."""
    idx = np.where(new, np.arange(len(new)), 0)
    return np.maximum.accumulate(idx)


def _sample_session_hours(period: Period, phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Session start hours following a daily rhythm shifted by each user's phase (rejection sampling)."""
    out = np.empty(len(phase))
    todo = np.arange(len(phase))
    while len(todo):
        h = rng.uniform(period.start_hour, period.end_hour - 0.75, size=len(todo))
        hour_of_day = (h + DAY_OFFSET_HOURS + phase[todo]) % 24
        intensity = 1.0 + 0.7 * np.sin(2 * np.pi * (hour_of_day - 14.0) / 24)
        ok = rng.random(len(todo)) * 1.7 < intensity
        out[todo[ok]] = h[ok]
        todo = todo[~ok]
    return out


@dataclass
class Block:
    """Interaction rows of one block of users in one period, sorted by user then time."""

    user_id: np.ndarray
    photo_index: np.ndarray  # position in the photo pool
    photo_id: np.ndarray
    click: np.ndarray
    like: np.ndarray
    follow: np.ndarray
    time: np.ndarray
    playing_time: np.ndarray
    duration_time: np.ndarray
    p_click: np.ndarray


def generate_block(
    users: Users,
    user_index: np.ndarray,
    photos: Photos,
    sampler: ExposureSampler,
    period: Period,
    rng: np.random.Generator,
    base_time_ms: int,
    intercept: float | None,
    world: World = WORLDS["demo"],
    world_rng: np.random.Generator | None = None,
) -> tuple[Block, float]:
    """Impressions of `users[user_index]` in `period`. Returns the block and the intercept used.

    With `intercept=None` the intercept is solved so this block's mean click probability is the
    real click rate, and the caller reuses it for every later block and for test. The world's
    mechanisms draw only from `world_rng` (required unless the world is `demo`), so `rng` draws the
    same numbers in every world up to the first place a mechanism changes what it is drawn for.
    p_click is the true probability of each row under the world, every mechanism included.
    """
    if world_rng is None and world != WORLDS["demo"]:
        raise ValueError(f"world {world.name!r} needs its own random stream (world_rng)")
    n_topics = users.interest.shape[1]
    rows_per_user = users.n_train_rows[user_index] if period.name == "train" else users.n_test_rows[user_index]
    n = int(rows_per_user.sum())
    row_user = np.repeat(np.arange(len(user_index)), rows_per_user)
    gu = user_index[row_user]  # global user position per row
    user_first_row = np.concatenate([[0], np.cumsum(rows_per_user)[:-1]])

    # batches (one screen, one timestamp) and sessions (a run of batches)
    new_batch = rng.random(n) < 1.0 / (1.0 + users.batch_extra[gu])
    new_batch[user_first_row] = True
    batch_of_row = np.cumsum(new_batch) - 1
    n_batches = int(batch_of_row[-1]) + 1
    batch_user = row_user[new_batch]
    new_session = rng.random(n_batches) < 1.0 / 8
    new_session[batch_of_row[user_first_row]] = True
    session_of_batch = np.cumsum(new_session) - 1
    batch_in_session = np.arange(n_batches) - _segment_starts(new_session)
    session_user = batch_user[new_session]
    session_hour = _sample_session_hours(period, users.phase_hours[user_index[session_user]], rng)
    session_slot = (session_hour // SLOT_HOURS).astype(np.int64) - sampler.first_slot
    row_slot = session_slot[session_of_batch[batch_of_row]]

    # which photos the recommender shows: the user's interests or what is popular now
    interest_cdf = np.cumsum(users.interest[user_index], axis=1)
    interest_cdf /= interest_cdf[:, -1:]
    topic = categorical_rows(interest_cdf, row_user, rng)
    drift = None
    if world.interest_drift > 0:
        # the share of the late interest at each row's time: a mixture, drawn as one
        row_hour = session_hour[session_of_batch[batch_of_row]]
        drift = world.interest_drift * np.clip(row_hour / (TRAIN_HOURS + TEST_HOURS), 0.0, 1.0)
        late_cdf = np.cumsum(users.late_interest[user_index], axis=1)
        late_cdf /= late_cdf[:, -1:]
        late_topic = categorical_rows(late_cdf, row_user, world_rng)
        from_late = world_rng.random(n) < drift
        topic[from_late] = late_topic[from_late]
    general = rng.random(n) >= PERSONALISED_SHARE
    general |= sampler.topic_totals[row_slot, topic] <= 0
    topic[general] = sampler.global_topics(row_slot[general], rng)
    photo = sampler.draw(row_slot, topic, rng)

    # no (user_id, photo_id) pair repeats: redraw repeats a few times, then drop what remains
    keep = np.ones(n, dtype=bool)
    for attempt in range(4):
        key = row_user.astype(np.int64) * len(photos) + photo
        _, first = np.unique(key, return_index=True)
        repeat = np.ones(n, dtype=bool)
        repeat[first] = False
        if not repeat.any():
            break
        if attempt == 3:
            keep = ~repeat
            break
        photo[repeat] = sampler.draw(row_slot[repeat], sampler.global_topics(row_slot[repeat], rng), rng)

    row_user, gu, batch_of_row, photo, row_slot = (
        a[keep] for a in (row_user, gu, batch_of_row, photo, row_slot)
    )
    if drift is not None:
        drift = drift[keep]
    n = len(photo)
    batch_size = np.bincount(batch_of_row, minlength=n_batches)[batch_of_row]
    depth = batch_in_session[batch_of_row]
    hour = session_hour[session_of_batch[batch_of_row]]
    hour_of_day = (hour + DAY_OFFSET_HOURS) % 24

    # the click model: interest alignment and more (quality, faces, text, duration, context, time)
    t = photos.topic[photo].astype(np.int64)
    has_face = photos.n_faces[photo] > 0
    duration = photos.duration[photo]
    if drift is None:
        interest = users.interest[gu, t]
    else:
        interest = (1.0 - drift) * users.interest[gu, t] + drift * users.late_interest[gu, t]
    alignment = np.log(0.03 + n_topics * interest)
    logit = (
        users.base_logit[gu]
        + 0.35 * alignment
        + users.subtopic_taste[gu, t, photos.subtopic[photo]]
        + users.quality_taste[gu] * photos.quality[photo]
        + has_face
        * (
            users.face_taste[gu]
            + users.male_taste[gu] * (photos.male_share[photo] - 0.5)
            + 0.15 * (photos.mean_appearance[photo] - 55.0) / 12.0
        )
        + users.text_taste[gu] * photos.has_text[photo]
        + users.duration_taste[gu] * (np.log1p(duration) - 3.0)
        - 0.2 * (duration == 0)
        - 0.2 * np.log(batch_size)
        - 0.04 * np.minimum(depth, 15)
        + 0.2 * np.sin(2 * np.pi * hour_of_day / 24)
    )
    if world.fine_taste > 0:
        logit += world.fine_taste * np.einsum("ij,ij->i", users.taste_direction[gu], photos.detail[photo])
    if world.popular_appeal > 0:
        log_popularity = np.log(photos.popularity[photo])
        logit += world.popular_appeal * log_popularity / POPULARITY_SIGMA
    if intercept is None:
        intercept = _solve_intercept(logit, TARGET_CLICK_RATE)
    p_click = 1.0 / (1.0 + np.exp(-(logit + intercept)))
    click = rng.random(n) < p_click

    playing = np.zeros(n, dtype=np.int64)
    watched = click & (duration > 0)
    share_watched = rng.beta(1.3, 1.2, size=n) * (1 + 2 * (rng.random(n) < 0.08) * rng.random(n))
    playing[watched] = np.rint(duration[watched] * share_watched[watched]).astype(np.int64)
    still = click & (duration == 0)
    playing[still] = rng.integers(1, 16, size=int(still.sum()))
    outlier = click & (rng.random(n) < 0.0005)
    playing[outlier] = np.minimum(rng.lognormal(9.0, 1.8, size=int(outlier.sum())), 1_912_441).astype(np.int64)
    like = click & (rng.random(n) < 1 / (1 + np.exp(-(-4.2 + 0.5 * alignment + 0.4 * photos.quality[photo]))))
    follow = click & (rng.random(n) < 1 / (1 + np.exp(-(-5.4 + 0.5 * alignment))))

    # batch times: the next screen comes after a short pause plus what the user watched
    if world.click_blind_timeline:
        # the pause is drawn for the batch alone: nothing shown or clicked in it moves it
        watched_seconds = world_rng.exponential(BLIND_WATCH_SECONDS, size=n_batches)
    else:
        watched_seconds = np.bincount(batch_of_row, weights=np.minimum(playing, 1200) * click, minlength=n_batches)
    gap_ms = np.rint((4.0 + rng.exponential(18.0, size=n_batches) + watched_seconds) * 1000)
    cum = np.cumsum(gap_ms)
    session_first = _segment_starts(new_session)
    since_session_start = cum - gap_ms - (cum[session_first] - gap_ms[session_first])
    batch_ms = np.rint(session_hour[session_of_batch] * HOUR_MS) + since_session_start
    batch_ms = np.minimum(batch_ms, period.end_hour * HOUR_MS - 1).astype(np.int64)
    time = base_time_ms + batch_ms[batch_of_row]

    order = np.lexsort((time, row_user))
    block = Block(
        user_id=users.user_id[gu][order],
        photo_index=photo[order],
        photo_id=photos.photo_id[photo][order],
        click=click[order].astype(np.int8),
        like=like[order].astype(np.int8),
        follow=follow[order].astype(np.int8),
        time=time[order],
        playing_time=playing[order],
        duration_time=duration[order].astype(np.int64),
        p_click=p_click[order],
    )
    return block, intercept


def _solve_intercept(logit: np.ndarray, target: float) -> float:
    lo, hi = -15.0, 15.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
