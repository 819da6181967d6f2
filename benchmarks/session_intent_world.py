"""A synthetic short-video log in the challenge's released layout, from its own generative story.

    python -m benchmarks.session_intent_world --out DIR [--users 500] [--train-rows-per-user 1000]
        [--test-rows-per-user 170] [--vector-dim 2048] [--seed 1]

(About 100 users or more: with fewer, the uploads are too few for every feed to find photos its
user has not seen, and the generator says so before writing anything.)

This world is written independently of the project's own generators and is used only to measure
the platform on a story it has never seen (never to tune it). The story, mechanism by mechanism,
with why a real app's log has each:

1. Photos arrive over time. Creators upload continuously (a Poisson stream over 6 hours of backlog
   and the 48 hours of the log, busier at lunch and in the evening). A photo can be shown only
   after its upload, and the feed favours fresh photos (exposure decays with age, half-life about
   two hours), as a real feed ranks for freshness. Photo ids increase with upload time. Train
   impressions (the first 36 hours) draw only on photos uploaded before the test window; test
   impressions (the last 12 hours) only on photos uploaded in it: the sets are disjoint and every
   test photo id is higher than every train photo id, as in the released data.
2. Topics are a mixture. Each photo mixes 1-3 of 60 topics (Dirichlet weights, usually around its
   creator's main topic). Its cover words are drawn LDA-style: each word picks a topic from the
   mixture, then a word from that topic's Zipf distribution over a 30k vocabulary, or a background
   word. About half the covers carry no text (creators differ in writing captions). Faces depend
   on topics (some topics are mostly people) and on the creator (who often shows themself).
3. Visual vectors come from a concept map, not a neural net. Each topic owns a few atoms of a
   512-d concept space, each creator a few more (their room, their style). A cover activates its
   topics' atoms with random strengths, its creator's atoms and many random background atoms;
   the D-d vector is a fixed random sparse non-negative projection of those activations with
   multiplicative noise. Content is recoverable from it, mixed with creator and background.
4. Users have a long-term taste and a per-session intent. Taste is a sparse distribution over
   topics. At a session's start the user picks an intent topic (mostly from taste, sometimes
   exploring anything); within the session clicks strongly favour it. The recommender cannot see
   the intent but follows it: the more the user clicked in the session, the more it serves the
   topics of those clicks. So what a session shows depends on its earlier clicks (its times never
   do: the schedule of sessions and screens is drawn before any click).
5. Creators. Users follow a few creators, mostly within their taste; a followed creator's photo
   gets a click bonus and a small "following" slot in the feed. Creators differ in quality, which
   shows in every photo of theirs.
6. Position and fatigue. Photos are shown in screens (batches sharing one timestamp); the first
   photo of a screen is clicked more, and clicks fall off with the impressions already seen in
   the session.
7. Drift. Each user's taste drifts a little over the 48 hours, so the test window's taste differs
   from the average of the training window's.
8. Popularity. Some photos are viral (much more appealing). The feed starts each photo from a
   noisy first guess (and its creator's record), then its exposure grows with the photo's clicks
   so far (rich get richer, recomputed every hour), so appeal is partly visible in early
   click-through and in how many impressions a photo gets: most photos are shown a couple of
   times, a few to a large share of the users.

Click probability of user u on photo p, shown at position k of a screen after n impressions of
the session: sigmoid(bias + user's click bias + taste_u(t) . topics_p + intent term (weight of the
session's intent topic in p) + followed creator + photo appeal (creator quality, virality, faces)
+ first-of-screen - fatigue(n)). Likes and follows happen only on clicks and are rare; playing
time is 0 unless clicked, a share of the duration (a few loops, rare huge outliers) when clicked.

Output, in DIR:
- train/train_interaction.txt (user_id, photo_id, click, like, follow, time, playing_time,
  duration_time), train/train_face.txt, train/train_text.txt, train/final_visual_train.zip, and
  test/ alike (test_interaction.txt: user_id, photo_id, time, duration_time): the released format;
- ground_truth/test_ground_truth.txt: user_id, photo_id, click (drawn from p), p_click, one line per
  test row in the order of test_interaction.txt;
- ground_truth/train_p_click.txt: user_id, photo_id, time, p_click of every train row, in the train
  file's order;
- ground_truth/summary.json: sizes, train click rate, the oracle AUC (of p_click on the test
  clicks) and oracle_auc_without_session_intent (the true logit without the intent term: the part
  no learner can know for a test row except through what its session showed).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MINUTE, HOUR = 60_000, 3_600_000  # milliseconds
TRAIN_START = 760_000_000_000 + 1_234_567  # ms, shifted into 1994 as released
TRAIN_HOURS, TEST_HOURS, BACKLOG_HOURS = 36, 12, 6
TEST_START = TRAIN_START + TRAIN_HOURS * HOUR
LOG_END = TEST_START + TEST_HOURS * HOUR
UPLOAD_START = TRAIN_START - BACKLOG_HOURS * HOUR
SPAN = 64 * HOUR  # larger than any upload time after UPLOAD_START: packs (group, time) in one int64
TEST_WARMUP = 5 * MINUTE  # the first test session starts once some test photos exist

N_TOPICS, VOCAB, WORDS_PER_TOPIC, N_CONCEPTS = 60, 30_000, 600, 512
IMPRESSIONS_PER_UPLOAD = 4.5  # uploads per split = its rows / this (some uploads are never shown)
VECTOR_CHUNK = 2048


@dataclass(frozen=True)
class Story:
    """The strengths of the click model and of the feed."""

    bias: float = -3.0
    user_bias_sd: float = 0.5
    taste: float = 0.6  # per unit of log-taste
    taste_floor: float = 0.01  # log(share + floor): how much an unloved topic is disliked
    drift_sd: float = 0.7  # of each topic's log-taste over the 48 hours
    intent: float = 2.5  # times the photo's weight on the session's intent topic
    explore: float = 0.25  # chance the intent is any topic rather than one of taste
    follow: float = 1.0
    creator_quality: float = 0.35
    appeal_sd: float = 0.45
    viral_share: float = 0.03
    viral_boost: float = 1.3
    first_of_screen: float = 0.35
    fatigue: float = 0.12  # per log(1 + impressions already seen in the session)
    freshness_hours: float = 3.0  # e-folding time of a photo's exposure
    rich_get_richer: float = 1.1  # exposure grows as (1 + clicks) ** this
    exposure_noise: float = 1.2  # sd of the log of the feed's first guess of a photo
    feed_follows_clicks: float = 0.2  # per click in the session, up to feed_follows_max
    feed_follows_max: float = 0.6
    following_slot: float = 0.06
    taste_slot: float = 0.5


# -- time ------------------------------------------------------------------------------------


def activity(ms: np.ndarray, shift_hours: np.ndarray | float = 0.0) -> np.ndarray:
    """Relative app activity by local (UTC+8) hour: low at night, a lunch bump, an evening peak."""
    hour = ((ms / 1000.0 + 8 * 3600) % 86400) / 3600.0 - shift_hours

    def bump(centre: float, width: float) -> np.ndarray:
        d = (hour - centre + 12) % 24 - 12
        return np.exp(-0.5 * (d / width) ** 2)

    return 0.2 + bump(21.0, 2.5) + 0.45 * bump(12.5, 1.5) + 0.3 * bump(17.0, 2.0)


def poisson_stream(rng: np.random.Generator, start: int, end: int, expected: float) -> np.ndarray:
    """Event times (ms, sorted) of a Poisson process on [start, end) following `activity`."""
    edges = np.arange(start, end + 1, MINUTE, dtype=np.int64)
    edges[-1] = end
    rate = activity(edges[:-1].astype(np.float64)) * np.diff(edges)
    counts = rng.poisson(rate * expected / rate.sum())
    lefts = np.repeat(edges[:-1], counts)
    widths = np.repeat(np.diff(edges), counts)
    return np.sort(lefts + (rng.random(len(lefts)) * widths).astype(np.int64))


def times_by_activity(rng: np.random.Generator, start: int, end: int, shift_hours: np.ndarray) -> np.ndarray:
    """One time per entry of `shift_hours` on [start, end), by rejection from the shifted activity."""
    out = np.empty(len(shift_hours), dtype=np.int64)
    todo = np.arange(len(shift_hours))
    while len(todo):
        t = start + (rng.random(len(todo)) * (end - start)).astype(np.int64)
        keep = rng.random(len(todo)) * 1.6 < activity(t.astype(np.float64), shift_hours[todo])
        out[todo[keep]] = t[keep]
        todo = todo[~keep]
    return out


def grouped_arange(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each count c, concatenated."""
    starts = np.cumsum(counts) - counts
    return np.arange(counts.sum()) - np.repeat(starts, counts)


def grouped_exclusive_cumsum(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Sum of the earlier values of the same group (rows sorted by group)."""
    total = np.cumsum(values) - values
    first = np.r_[True, group[1:] != group[:-1]]
    return total - np.maximum.accumulate(np.where(first, total, 0))


def sample_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One column index per row of `weights`, drawn in proportion to the row."""
    cdf = np.cumsum(weights, axis=1)
    r = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((cdf <= r[:, None]).sum(axis=1), weights.shape[1] - 1)


# -- the world: topics, creators, photos, users ---------------------------------------------


@dataclass
class Topics:
    share: np.ndarray  # (K,) how common each topic is
    people: np.ndarray  # (K,) chance a cover of the topic shows a person
    words: np.ndarray  # (K, WORDS_PER_TOPIC) vocabulary indices, by rank
    atoms: np.ndarray  # (K, 4) concept atoms


def make_topics(rng: np.random.Generator) -> Topics:
    share = rng.permutation(np.arange(1, N_TOPICS + 1) ** -0.8)
    people = rng.beta(0.6, 0.9, N_TOPICS)
    words = np.stack([rng.choice(VOCAB, WORDS_PER_TOPIC, replace=False) for _ in range(N_TOPICS)])
    atoms = np.stack([rng.choice(N_CONCEPTS, 4, replace=False) for _ in range(N_TOPICS)])
    return Topics(share / share.sum(), people, words, atoms)


@dataclass
class Creators:
    main: np.ndarray  # main topic
    second: np.ndarray  # second topic
    quality: np.ndarray
    productivity: np.ndarray
    captions: np.ndarray  # chance a cover of theirs has text
    selfie: np.ndarray  # chance they show themself on a cover
    gender: np.ndarray
    age: np.ndarray
    looks: np.ndarray
    atoms: np.ndarray  # (C, 3) concept atoms


def make_creators(rng: np.random.Generator, n: int, topics: Topics) -> Creators:
    return Creators(
        main=rng.choice(N_TOPICS, n, p=topics.share),
        second=rng.choice(N_TOPICS, n, p=topics.share),
        quality=rng.normal(0, 1, n),
        productivity=rng.lognormal(0, 1.0, n),
        captions=1 / (1 + np.exp(-rng.normal(0, 1.8, n))),
        selfie=rng.beta(0.5, 1.5, n),
        gender=rng.integers(0, 2, n),
        age=np.clip(rng.normal(26, 8, n), 8, 70),
        looks=np.clip(rng.normal(55, 15, n), 0, 99),
        atoms=np.stack([rng.choice(N_CONCEPTS, 3, replace=False) for _ in range(n)]),
    )


@dataclass
class Photos:
    """Every uploaded photo, indexed in upload order (index order = id order)."""

    upload: np.ndarray  # ms
    creator: np.ndarray
    theta: np.ndarray  # (N, K) float32 topic mixture
    primary: np.ndarray  # the mixture's largest topic
    appeal: np.ndarray  # logit bonus: creator quality, virality, faces
    duration: np.ndarray  # seconds
    face_ptr: np.ndarray  # (N + 1,) faces of photo i are face_*[face_ptr[i]:face_ptr[i + 1]]
    face_share: np.ndarray
    face_gender: np.ndarray
    face_age: np.ndarray
    face_looks: np.ndarray


def topic_mixtures(rng: np.random.Generator, creator: np.ndarray, creators: Creators, topics: Topics) -> np.ndarray:
    """1-3 topics per photo around its creator's topics, with Dirichlet weights."""
    n = len(creator)
    r = rng.random(n)
    first = np.where(r < 0.75, creators.main[creator], np.where(r < 0.9, creators.second[creator], -1))
    first = np.where(first < 0, rng.choice(N_TOPICS, n, p=topics.share), first)
    extra = rng.choice(3, n, p=[0.45, 0.4, 0.15])
    chosen = np.stack([first, rng.choice(N_TOPICS, n, p=topics.share), rng.choice(N_TOPICS, n, p=topics.share)], 1)
    weight = rng.gamma(np.array([2.0, 1.0, 1.0]), size=(n, 3)) * (np.arange(3)[None, :] <= extra[:, None])
    weight /= weight.sum(axis=1, keepdims=True)
    theta = np.zeros((n, N_TOPICS), dtype=np.float32)
    np.add.at(theta, (np.repeat(np.arange(n), 3), chosen.ravel()), weight.ravel().astype(np.float32))
    return theta


def make_faces(rng: np.random.Generator, theta: np.ndarray, creator: np.ndarray, creators: Creators, topics: Topics):
    """Faces per photo: likelier in people topics and for creators who show themselves."""
    n = len(creator)
    people = theta @ topics.people.astype(np.float32)
    selfie = creators.selfie[creator]
    has_face = rng.random(n) < np.clip(0.75 * people + 0.45 * selfie, 0, 0.97)
    count = np.where(has_face, 1 + rng.poisson(0.22, n), 0)
    crowd = has_face & (rng.random(n) < 0.004)
    count[crowd] = rng.integers(5, 21, crowd.sum())
    ptr = np.r_[0, np.cumsum(count)]
    owner = np.repeat(np.arange(n), count)
    is_creator = (grouped_arange(count) == 0) & (rng.random(len(owner)) < selfie[owner] + 0.3)
    c = creator[owner]
    share = np.clip(rng.beta(2, 6, len(owner)) * np.where(count[owner] > 3, 0.5, 1.0), 0.01, 1.0)
    gender = np.where(is_creator, creators.gender[c], rng.integers(0, 2, len(owner)))
    age = np.where(is_creator, creators.age[c] + rng.normal(0, 2, len(owner)), rng.normal(25, 9, len(owner)))
    looks = np.where(is_creator, creators.looks[c] + rng.normal(0, 5, len(owner)), rng.normal(50, 15, len(owner)))
    return ptr, share, gender, np.clip(np.round(age), 3, 80).astype(int), np.clip(np.round(looks), 0, 99).astype(int)


def make_photos(rng: np.random.Generator, story: Story, expected_train: float, expected_test: float, topics: Topics) -> tuple[Photos, Creators]:
    upload = np.r_[
        poisson_stream(rng, UPLOAD_START, TEST_START, expected_train * (TRAIN_HOURS + BACKLOG_HOURS) / TRAIN_HOURS),
        poisson_stream(rng, TEST_START, LOG_END, expected_test),
    ]
    n = len(upload)
    creators = make_creators(rng, max(30, n // 6), topics)
    creator = rng.choice(len(creators.main), n, p=creators.productivity / creators.productivity.sum())
    theta = topic_mixtures(rng, creator, creators, topics)
    ptr, share, gender, age, looks = make_faces(rng, theta, creator, creators, topics)
    best_looks = np.zeros(n)
    has_face = np.diff(ptr) > 0
    best_looks[has_face] = np.maximum.reduceat(looks, ptr[:-1][has_face])
    viral = rng.random(n) < story.viral_share
    appeal = (
        story.creator_quality * creators.quality[creator]
        + rng.normal(0, story.appeal_sd, n)
        + viral * rng.normal(story.viral_boost, 0.4, n)
        + has_face * 0.006 * (best_looks - 50)
    )
    still = rng.random(n) < 0.03
    duration = np.where(still, 0, np.clip(np.round(rng.lognormal(np.log(11), 0.8, n)), 1, 600)).astype(np.int64)
    photos = Photos(upload, creator, theta, theta.argmax(axis=1), appeal, duration, ptr, share, gender, age, looks)
    return photos, creators


@dataclass
class Users:
    taste: np.ndarray  # (U, K) log-taste at the start, centred per user
    drift: np.ndarray  # (U, K) change of log-taste over the 48 hours
    feed_estimate: np.ndarray  # (U, K) what the recommender believes the taste is (undrifted, smoothed)
    bias: np.ndarray
    activity: np.ndarray  # rows relative to the mean
    shift: np.ndarray  # hours their day runs late or early
    follow_ptr: np.ndarray  # (U + 1,) followed creators of u: follow_creator[follow_ptr[u]:follow_ptr[u + 1]]
    follow_creator: np.ndarray
    follow_key: np.ndarray  # sorted u * n_creators + creator


def creator_pick_by_topic(rng: np.random.Generator, topic: np.ndarray, creators: Creators) -> np.ndarray:
    """A creator whose main topic is `topic`, in proportion to productivity and quality."""
    order = np.argsort(creators.main, kind="stable")
    weight = (creators.productivity * np.exp(0.5 * creators.quality))[order]
    cum = np.r_[0.0, np.cumsum(weight)]
    bounds = np.searchsorted(creators.main[order], np.arange(N_TOPICS + 1))
    lo, hi = bounds[topic], bounds[topic + 1]
    x = cum[lo] + rng.random(len(topic)) * (cum[hi] - cum[lo])
    at = np.clip(np.searchsorted(cum, x, "right") - 1, lo, np.maximum(hi - 1, lo))
    fallback = rng.integers(0, len(order), len(topic))
    return np.where(hi > lo, order[np.minimum(at, len(order) - 1)], order[fallback])


def make_users(rng: np.random.Generator, story: Story, n: int, topics: Topics, creators: Creators) -> Users:
    share = rng.dirichlet(6.0 * topics.share, n)  # sparse: a few topics each
    taste = np.log(share + story.taste_floor)
    taste -= taste.mean(axis=1, keepdims=True)
    n_follow = 1 + rng.poisson(5, n)
    owner = np.repeat(np.arange(n), n_follow)
    followed = creator_pick_by_topic(rng, sample_rows(rng, share[owner]), creators)
    key = np.unique(owner.astype(np.int64) * len(creators.main) + followed)
    owner, followed = key // len(creators.main), key % len(creators.main)
    return Users(
        taste=taste,
        drift=rng.normal(0, story.drift_sd, (n, N_TOPICS)),
        feed_estimate=0.6 * share + 0.4 * topics.share,
        bias=rng.normal(0, story.user_bias_sd, n),
        activity=rng.lognormal(-0.245, 0.7, n),
        shift=rng.normal(0, 1.5, n),
        follow_ptr=np.r_[0, np.cumsum(np.bincount(owner, minlength=n))],
        follow_creator=followed,
        follow_key=key,
    )


# -- the schedule: sessions and screens, drawn before any click ------------------------------


@dataclass
class Schedule:
    """Sessions and screens of both splits. Screens are in session order, sessions by user."""

    session_user: np.ndarray
    session_start: np.ndarray
    session_test: np.ndarray  # bool
    screen_session: np.ndarray
    screen_index: np.ndarray  # j-th screen of its session
    screen_time: np.ndarray
    screen_size: np.ndarray
    screen_seen: np.ndarray  # impressions of the session before this screen


def split_schedule(rng: np.random.Generator, rows: np.ndarray, users: Users, start: int, end: int):
    """Screens and sessions of one split for users with `rows` impressions each."""
    n_users = len(rows)
    per_user = np.ceil(rows / 3.0).astype(np.int64) + 4  # enough screens: sizes are at least 1
    size = 1 + np.minimum(rng.poisson(3.5, per_user.sum()), 14)
    user = np.repeat(np.arange(n_users), per_user)
    before = grouped_exclusive_cumsum(size, user)
    keep = before < rows[user]
    user, size, before = user[keep], size[keep], before[keep]
    size = np.minimum(size, rows[user] - before)
    j_user = grouped_arange(np.bincount(user, minlength=n_users))
    new_session = (j_user == 0) | (rng.random(len(user)) < 1 / 7)
    session = np.cumsum(new_session) - 1
    n_sessions = session[-1] + 1
    session_user = user[new_session]
    index = grouped_arange(np.bincount(session, minlength=n_sessions))
    gap = np.where(index == 0, 0, 2_000 + rng.exponential(20_000, len(user)).astype(np.int64))
    offset = grouped_exclusive_cumsum(gap, session) + gap
    length = np.bincount(session, weights=gap, minlength=n_sessions).astype(np.int64)
    start_time = times_by_activity(rng, start, end, users.shift[session_user])
    start_time = start_time[np.lexsort((start_time, session_user))]  # in session order within each user
    pushed = grouped_exclusive_cumsum(length + 60_000, session_user)  # no two sessions of a user overlap
    lifted = (start_time - pushed) + session_user.astype(np.int64) * (4 * SPAN)
    start_time = np.maximum.accumulate(lifted) - session_user.astype(np.int64) * (4 * SPAN) + pushed
    screen_time = start_time[session] + offset
    keep = screen_time < end
    return session_user, start_time, session[keep], index[keep], screen_time[keep], size[keep]


def make_schedule(rng: np.random.Generator, users: Users, train_rows: int, test_rows: int) -> Schedule:
    n = len(users.bias)
    train = np.maximum(np.round(train_rows * users.activity), max(20, train_rows // 10)).astype(np.int64)
    test = np.maximum(np.round(test_rows * users.activity * rng.lognormal(-0.08, 0.4, n)), 5).astype(np.int64)
    a_user, a_start, a_session, a_index, a_time, a_size = split_schedule(rng, train, users, TRAIN_START, TEST_START)
    b_user, b_start, b_session, b_index, b_time, b_size = split_schedule(rng, test, users, TEST_START + TEST_WARMUP, LOG_END)
    session = np.r_[a_session, b_session + len(a_user)]
    size = np.r_[a_size, b_size]
    return Schedule(
        session_user=np.r_[a_user, b_user],
        session_start=np.r_[a_start, b_start],
        session_test=np.r_[np.zeros(len(a_user), bool), np.ones(len(b_user), bool)],
        screen_session=session,
        screen_index=np.r_[a_index, b_index],
        screen_time=np.r_[a_time, b_time],
        screen_size=size,
        screen_seen=grouped_exclusive_cumsum(size, session),
    )


# -- the feed and the clicks -----------------------------------------------------------------


class Pools:
    """Photos grouped (by topic, by creator, or all in one group), each group in upload order;
    draws a photo of a group uploaded in a time range, in proportion to the current weights."""

    def __init__(self, group: np.ndarray, upload: np.ndarray):
        self.order = np.lexsort((upload, group))
        self.key = group[self.order].astype(np.int64) * SPAN + (upload[self.order] - UPLOAD_START)
        self.cum = np.zeros(len(group) + 1)

    def reweight(self, weight: np.ndarray) -> None:
        self.cum = np.r_[0.0, np.cumsum(weight[self.order])]

    def draw(self, rng: np.random.Generator, group: np.ndarray, since: np.ndarray, until: np.ndarray) -> np.ndarray:
        """A photo per row uploaded in [since, until] (ms); -1 where the group has none."""
        base = group.astype(np.int64) * SPAN - UPLOAD_START
        lo = np.searchsorted(self.key, base + since, "left")
        hi = np.searchsorted(self.key, base + until, "right")
        a, b = self.cum[lo], self.cum[hi]
        x = a + rng.random(len(group)) * (b - a)
        at = np.clip(np.searchsorted(self.cum, x, "right") - 1, lo, np.maximum(hi - 1, lo))
        return np.where((hi > lo) & (b > a), self.order[np.minimum(at, len(self.order) - 1)], -1)


@dataclass
class Log:
    """One entry per impression, in simulation order."""

    user: np.ndarray
    photo: np.ndarray
    time: np.ndarray
    test: np.ndarray
    position: np.ndarray
    click: np.ndarray
    logit: np.ndarray
    intent_term: np.ndarray


class Feed:
    """The recommender and the users' clicks, simulated in time order, one hour block at a time,
    and within a block screen by screen (vectorised over the sessions of the block)."""

    def __init__(self, rng, story: Story, photos: Photos, users: Users, creators: Creators, schedule: Schedule):
        self.rng, self.story, self.photos, self.users, self.schedule = rng, story, photos, users, schedule
        self.n_creators = len(creators.main)
        # the feed's first guess of a photo: its creator's record, and a noisy early score
        guess = rng.lognormal(0, story.exposure_noise, len(photos.upload))
        self.exposure_prior = guess * np.exp(story.creator_quality * creators.quality[photos.creator])
        n = len(photos.upload)
        self.pools = {
            "topic": Pools(photos.primary, photos.upload),
            "creator": Pools(photos.creator, photos.upload),
            "all": Pools(np.zeros(n, dtype=np.int64), photos.upload),
        }
        self.clicks = np.zeros(n)
        self.seen: set[int] = set()
        s = schedule
        self.session_clicks = np.zeros(len(s.session_user))
        self.session_topics = np.zeros((len(s.session_user), N_TOPICS), dtype=np.float32)
        self.intent = self.draw_intents()

    def taste_at(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        frac = ((t - TRAIN_START) / (LOG_END - TRAIN_START))[:, None]
        return self.users.taste[user] + frac * self.users.drift[user]

    def draw_intents(self) -> np.ndarray:
        s = self.schedule
        taste = self.taste_at(s.session_user, s.session_start)
        from_taste = sample_rows(self.rng, np.exp(taste - taste.max(axis=1, keepdims=True)))
        explore = self.rng.random(len(from_taste)) < self.story.explore
        return np.where(explore, self.rng.integers(0, N_TOPICS, len(from_taste)), from_taste)

    def reweight(self, block_start: int) -> None:
        """Exposure weights for the hour: fresh photos first, clicked photos more (rich get richer)."""
        age_hours = (block_start - self.photos.upload) / HOUR
        weight = self.exposure_prior * (1 + self.clicks) ** self.story.rich_get_richer
        weight = weight * np.exp(-np.clip(age_hours, -4, 60) / self.story.freshness_hours)
        weight[age_hours < -4] = 0.0  # not uploaded before the hour's sessions end
        for pool in self.pools.values():
            pool.reweight(weight)

    def choose(self, user, session, t, since) -> np.ndarray:
        """The feed's photo for each slot: following the session's clicks, a followed creator,
        the user's (believed) taste, or whatever is fresh and popular."""
        rng, story, n = self.rng, self.story, len(user)
        follow_p = np.minimum(story.feed_follows_max, story.feed_follows_clicks * self.session_clicks[session])
        r = rng.random(n)
        n_follow = np.diff(self.users.follow_ptr)[user]
        source = np.full(n, "all", dtype=object)
        group = np.zeros(n, dtype=np.int64)
        by_clicks = r < follow_p
        if by_clicks.any():
            source[by_clicks] = "topic"
            group[by_clicks] = sample_rows(rng, self.session_topics[session[by_clicks]] + 1e-6)
        by_follow = ~by_clicks & (r < follow_p + story.following_slot) & (n_follow > 0)
        if by_follow.any():
            k = self.users.follow_ptr[user[by_follow]] + (rng.random(by_follow.sum()) * n_follow[by_follow]).astype(np.int64)
            source[by_follow] = "creator"
            group[by_follow] = self.users.follow_creator[k]
        by_taste = ~by_clicks & ~by_follow & (r < follow_p + story.following_slot + story.taste_slot)
        if by_taste.any():
            source[by_taste] = "topic"
            group[by_taste] = sample_rows(rng, self.users.feed_estimate[user[by_taste]])
        return self.unseen(user, source, group, t, since)

    def draw(self, source, group, t, since) -> np.ndarray:
        """A photo per slot from its pool; from all fresh photos where the pool has none."""
        photo = np.full(len(group), -1)
        for name in ("topic", "creator"):
            mine = source == name
            if mine.any():
                photo[mine] = self.pools[name].draw(self.rng, group[mine], since[mine], t[mine])
        rest = photo < 0
        photo[rest] = self.pools["all"].draw(self.rng, np.zeros(rest.sum(), dtype=np.int64), since[rest], t[rest])
        return photo

    def unseen(self, user, source, group, t, since) -> np.ndarray:
        """Draw the slots' photos so that no (user, photo) pair repeats: a photo the user has seen
        is drawn again from the same pool, then from all fresh photos, then from any of the split."""
        n_photos = len(self.photos.upload)
        photo = self.draw(source, group, t, since)
        todo = np.arange(len(photo))
        for attempt in range(200):
            keys = (user[todo].astype(np.int64) * n_photos + photo[todo]).tolist()
            again = []
            for i, key in zip(todo.tolist(), keys):
                if key in self.seen:
                    again.append(i)
                else:
                    self.seen.add(key)
            if not again:
                return photo
            todo = np.array(again)
            if attempt < 5:
                photo[todo] = self.draw(source[todo], group[todo], t[todo], since[todo])
            elif attempt < 20:
                photo[todo] = self.pools["all"].draw(self.rng, np.zeros(len(todo), dtype=np.int64), since[todo], t[todo])
            else:
                lo = np.searchsorted(self.photos.upload, since[todo], "left")
                hi = np.searchsorted(self.photos.upload, t[todo], "right")
                photo[todo] = lo + (self.rng.random(len(todo)) * (hi - lo)).astype(np.int64)
        raise RuntimeError("could not find unseen photos for some users")

    def click_logit(self, user, session, photo, t, position, seen) -> tuple[np.ndarray, np.ndarray]:
        story, photos = self.story, self.photos
        theta = photos.theta[photo]
        taste = (theta * self.taste_at(user, t)).sum(axis=1)
        intent = story.intent * theta[np.arange(len(photo)), self.intent[session]]
        key = user.astype(np.int64) * self.n_creators + photos.creator[photo]
        at = np.minimum(np.searchsorted(self.users.follow_key, key), len(self.users.follow_key) - 1)
        followed = self.users.follow_key[at] == key
        logit = (
            story.bias
            + self.users.bias[user]
            + story.taste * taste
            + intent
            + story.follow * followed
            + photos.appeal[photo]
            + story.first_of_screen * (position == 0)
            - story.fatigue * np.log1p(seen)
        )
        return logit, intent

    def run(self) -> Log:
        s = self.schedule
        block = (s.session_start[s.screen_session] - UPLOAD_START) // HOUR
        order = np.lexsort((s.screen_session, s.screen_index, block))
        size = s.screen_size[order]
        screen = np.repeat(order, size)
        position = grouped_arange(size)
        session = s.screen_session[screen]
        log = Log(
            user=s.session_user[session],
            photo=np.zeros(len(screen), dtype=np.int64),
            time=s.screen_time[screen],
            test=s.session_test[session],
            position=position,
            click=np.zeros(len(screen), dtype=np.int8),
            logit=np.zeros(len(screen)),
            intent_term=np.zeros(len(screen)),
        )
        seen = s.screen_seen[screen] + position
        since = np.where(log.test, TEST_START, UPLOAD_START)
        step = block[order] * 1000 + s.screen_index[order]
        step = np.repeat(step, size)
        bounds = np.r_[0, np.flatnonzero(np.diff(step)) + 1, len(step)]
        current_block = -1
        for a, b in zip(bounds[:-1], bounds[1:]):
            if step[a] // 1000 != current_block:
                current_block = step[a] // 1000
                self.reweight(UPLOAD_START + current_block * HOUR)
            sl = slice(a, b)
            photo = self.choose(log.user[sl], session[sl], log.time[sl], since[sl])
            logit, intent = self.click_logit(log.user[sl], session[sl], photo, log.time[sl], position[sl], seen[sl])
            click = self.rng.random(b - a) < 1 / (1 + np.exp(-logit))
            log.photo[sl], log.logit[sl], log.intent_term[sl], log.click[sl] = photo, logit, intent, click
            np.add.at(self.clicks, photo, click)
            np.add.at(self.session_clicks, session[sl], click)
            np.add.at(self.session_topics, (session[sl][click], self.photos.primary[photo[click]]), 1.0)
        return log


# -- writing ---------------------------------------------------------------------------------


def anonymous_ids(rng: np.random.Generator, n: int, low: int, mean_gap: float) -> np.ndarray:
    """n increasing ids with random gaps, starting near `low`."""
    return low + rng.integers(0, 1000) + np.cumsum(1 + rng.poisson(mean_gap - 1, n))


def write_columns(path: Path, columns: list[np.ndarray], formats: list[str]) -> None:
    with open(path, "w") as f:
        fmt = "\t".join(formats) + "\n"
        for i in range(0, len(columns[0]), 200_000):
            f.write("".join(fmt % row for row in zip(*(c[i : i + 200_000].tolist() for c in columns))))


def play_times(rng: np.random.Generator, duration: np.ndarray, click: np.ndarray) -> np.ndarray:
    """Seconds played: 0 unless clicked; a share of the duration plus some loops; rare huge outliers."""
    n = len(duration)
    watched = duration * (rng.beta(1.3, 1.3, n) + rng.poisson(0.25, n))
    watched = np.where(duration == 0, rng.exponential(6, n), watched)
    outlier = rng.random(n) < 0.0015
    watched = np.where(outlier, watched * rng.lognormal(3, 1.5, n) + 60, watched)
    return np.where(click, np.clip(np.round(watched), 0, 1_912_441), 0).astype(np.int64)


def reactions(rng: np.random.Generator, log: Log, photos: Photos, users: Users, creators: Creators, n_creators: int):
    """Likes and follows: rare, only on clicks."""
    click = log.click.astype(bool)
    q = creators.quality[photos.creator[log.photo]]
    like = click & (rng.random(len(click)) < 1 / (1 + np.exp(-(-5.3 + 0.8 * photos.appeal[log.photo] + 0.3 * q))))
    key = log.user.astype(np.int64) * n_creators + photos.creator[log.photo]
    at = np.minimum(np.searchsorted(users.follow_key, key), len(users.follow_key) - 1)
    already = users.follow_key[at] == key
    follow = click & ~already & (rng.random(len(click)) < 1 / (1 + np.exp(-(-6.1 + 0.6 * q))))
    return like.astype(np.int64), follow.astype(np.int64)


def cover_words(rng: np.random.Generator, photos: Photos, creators: Creators, topics: Topics, shown: np.ndarray, word_id: np.ndarray) -> list[str]:
    """LDA-style cover words of the `shown` photos; '0' for a cover without text."""
    has_text = rng.random(len(shown)) < creators.captions[photos.creator[shown]]
    count = np.where(has_text, 1 + rng.poisson(3.5, len(shown)), 0)
    owner = np.repeat(shown, count)
    topic = sample_rows(rng, photos.theta[owner] + 1e-9)
    rank_cdf = np.cumsum(np.arange(1, WORDS_PER_TOPIC + 1) ** -1.05)
    rank = np.minimum(np.searchsorted(rank_cdf, rng.random(len(owner)) * rank_cdf[-1]), WORDS_PER_TOPIC - 1)
    background_cdf = np.cumsum(np.arange(1, VOCAB + 1) ** -1.0)
    background = np.minimum(np.searchsorted(background_cdf, rng.random(len(owner)) * background_cdf[-1]), VOCAB - 1)
    word = np.where(rng.random(len(owner)) < 0.7, topics.words[topic, rank], background)
    ids = word_id[word]
    out, at = [], 0
    for c in count.tolist():
        if c == 0:
            out.append("0")
        else:
            words = ids[at : at + c].tolist()
            out.append(",".join(map(str, words if words != [0] else [0, int(word_id[1])])))
        at += c
    return out


def face_json(photos: Photos, i: int) -> str:
    a, b = photos.face_ptr[i], photos.face_ptr[i + 1]
    return "[" + ", ".join(
        f"[{photos.face_share[k]:.2f}, {photos.face_gender[k]}, {photos.face_age[k]}, {photos.face_looks[k]}]" for k in range(a, b)
    ) + "]"


class VisualMap:
    """Concept activations -> D-d non-negative vectors through a fixed sparse random projection."""

    def __init__(self, rng: np.random.Generator, dim: int):
        mask = rng.random((N_CONCEPTS, dim)) < 0.03
        self.projection = (mask * rng.lognormal(0, 0.5, (N_CONCEPTS, dim))).astype(np.float32)
        self.dim = dim

    def vectors(self, rng, photos: Photos, creators: Creators, topics: Topics, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        topic_atoms = np.zeros((N_TOPICS, N_CONCEPTS), dtype=np.float32)
        topic_atoms[np.repeat(np.arange(N_TOPICS), topics.atoms.shape[1]), topics.atoms.ravel()] = 1.0
        concepts = (photos.theta[rows] @ topic_atoms) * rng.gamma(2.0, 0.6, (n, N_CONCEPTS)).astype(np.float32)
        atoms = creators.atoms[photos.creator[rows]]
        concepts[np.repeat(np.arange(n), atoms.shape[1]), atoms.ravel()] += rng.gamma(2.0, 0.35, atoms.size).astype(np.float32)
        background = rng.integers(0, N_CONCEPTS, (n, 40))
        np.add.at(concepts, (np.repeat(np.arange(n), 40), background.ravel()), rng.exponential(0.12, n * 40).astype(np.float32))
        x = concepts @ self.projection
        x *= rng.lognormal(0, 0.3, x.shape).astype(np.float32)
        return x


def npy_header(dim: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, dim), dtype=np.float32))
    return buf.getvalue()[: -4 * dim]


def write_vectors(path: Path, folder: str, rng, visual: VisualMap, photos, creators, topics, rows: np.ndarray, ids: np.ndarray) -> None:
    header = npy_header(visual.dim)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for a in range(0, len(rows), VECTOR_CHUNK):
            x = visual.vectors(rng, photos, creators, topics, rows[a : a + VECTOR_CHUNK])
            for photo_id, vector in zip(ids[a : a + VECTOR_CHUNK].tolist(), x):
                info = zipfile.ZipInfo(f"{folder}/{photo_id}", date_time=(1994, 2, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, header + vector.tobytes())


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve, ties counted half."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    positives = int(label.sum())
    negatives = len(label) - positives
    return float((rank[label.astype(bool)].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# -- the whole run ---------------------------------------------------------------------------


def generate(out: Path, n_users: int, train_rows: int, test_rows: int, dim: int, seed: int, story: Story = Story()) -> dict:
    rng = np.random.default_rng(seed)
    topics = make_topics(rng)
    photos, creators = make_photos(rng, story, n_users * train_rows / IMPRESSIONS_PER_UPLOAD, n_users * test_rows / IMPRESSIONS_PER_UPLOAD, topics)
    users = make_users(rng, story, n_users, topics, creators)
    schedule = make_schedule(rng, users, train_rows, test_rows)
    log = Feed(rng, story, photos, users, creators, schedule).run()

    user_id = rng.permutation(anonymous_ids(rng, n_users, 1_000, 3.0))
    photo_id = anonymous_ids(rng, len(photos.upload), 5_000_000, 2.5)
    word_id = np.sort(rng.choice(250_000, VOCAB, replace=False))
    word_id[rng.integers(1, 50)] = 0  # a common word whose id is 0, as in the released data
    word_id[1] = word_id[1] or 1
    like, follow = reactions(rng, log, photos, users, creators, len(creators.main))
    playing = play_times(rng, photos.duration[log.photo], log.click)

    order = np.lexsort((log.position, log.time, user_id[log.user]))
    visual = VisualMap(np.random.default_rng([seed, 1]), dim)
    summary = {"generator": "benchmarks.session_intent_world", "seed": seed, "users": n_users}
    for split in ("train", "test"):
        rows = order[log.test[order] == (split == "test")]
        folder = out / split
        folder.mkdir(parents=True)
        u, p = user_id[log.user[rows]], photo_id[log.photo[rows]]
        duration = photos.duration[log.photo[rows]]
        if split == "train":
            columns = [u, p, log.click[rows], like[rows], follow[rows], log.time[rows], playing[rows], duration]
        else:
            columns = [u, p, log.time[rows], duration]
        write_columns(folder / f"{split}_interaction.txt", columns, ["%d"] * len(columns))
        shown = np.unique(log.photo[rows])
        text = cover_words(np.random.default_rng([seed, 2, split == "test"]), photos, creators, topics, shown, word_id)
        with open(folder / f"{split}_text.txt", "w") as f:
            f.write("".join(f"{photo_id[i]}\t{t}\n" for i, t in zip(shown.tolist(), text)))
        with open(folder / f"{split}_face.txt", "w") as f:
            f.write("".join(f"{photo_id[i]}\t{face_json(photos, i)}\n" for i in shown.tolist() if photos.face_ptr[i + 1] > photos.face_ptr[i]))
        write_vectors(folder / f"final_visual_{split}.zip", f"final_visual_{split}", np.random.default_rng([seed, 3, split == "test"]), visual, photos, creators, topics, shown, photo_id[shown])
        summary[f"{split}_rows"] = int(len(rows))
        summary[f"{split}_photos"] = int(len(shown))
        truth = out / "ground_truth"
        truth.mkdir(exist_ok=True)
        if split == "train":
            summary["click_rate_train"] = round(float(log.click[rows].mean()), 4)
            # every train row's true probability, line for line with the train file (to read a validation's rows)
            write_columns(truth / "train_p_click.txt", [u, p, log.time[rows], 1 / (1 + np.exp(-log.logit[rows]))],
                          ["%d", "%d", "%d", "%.6f"])
        else:
            p_click = 1 / (1 + np.exp(-log.logit[rows]))
            write_columns(truth / "test_ground_truth.txt", [u, p, log.click[rows], p_click], ["%d", "%d", "%d", "%.6f"])
            summary["oracle_auc"] = round(auc(log.logit[rows], log.click[rows]), 4)
            summary["oracle_auc_without_session_intent"] = round(auc(log.logit[rows] - log.intent_term[rows], log.click[rows]), 4)
    (out / "ground_truth" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.session_intent_world", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="a new (or empty) folder for the dataset")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--train-rows-per-user", type=int, default=1000)
    parser.add_argument("--test-rows-per-user", type=int, default=170)
    parser.add_argument("--vector-dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"session_intent_world: {out} already exists and is not empty; give a new folder", file=sys.stderr)
        return 2
    started = time.time()
    try:
        summary = generate(out, args.users, args.train_rows_per_user, args.test_rows_per_user, args.vector_dim, args.seed)
    except RuntimeError as exc:  # raised while the feed is drawn, before any file is written
        print(f"session_intent_world: {exc}: the catalogue is too small for these users' feeds "
              "(it needs about 100 users or more)", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"[session_intent_world] wrote {out} in {time.time() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
