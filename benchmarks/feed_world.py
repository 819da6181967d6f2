"""A third, independently written synthetic world: a co-click feed over creators, faces, cover text and clip length.

    python -m benchmarks.feed_world --out DIR [--users 2000] [--train-rows-per-user 300]
        [--test-rows-per-user 75] [--vector-dim 2048] [--seed 0]

Writes a short-video impression log in the released layout of the 2018 Kuaishou User Interest
Modeling Challenge (train/ and test/ with *_interaction.txt, *_face.txt, *_text.txt and
final_visual_*.zip), plus ground_truth/test_ground_truth.txt (user_id, photo_id, click, p_click),
ground_truth/train_p_click.txt (user_id, photo_id, time, p_click of every train row, in the train
file's order) and ground_truth/summary.json (the story's parameters, counts, the oracle AUC and
the AUCs of the true model with each unobservable or mechanism-specific term removed). It is a measuring
instrument: nothing here was tuned against the platform, only against the story's own oracle.

The story, mechanism by mechanism, and why a real log has each:

Heterogeneous users. Activity is log-normal (sigma 0.9): a long tail of light users with a handful
of train impressions and a few heavy users with twenty times the mean. Click propensity has a
per-user level (heavier users scroll more and click a bit less per impression) and a per-user
hour-of-day cycle (amplitude and peak hour of their own). Real app populations are exactly this
skewed; a global AUC is dominated by between-user differences in propensity, and light users are
where per-user statistics are noisy.

Faces that matter. A creator has a persona (gender, age, appearance) and a rate of putting a face
on the cover; the first face of a faced cover is the creator's, more faces are bystanders or group
shots. Users have tastes over faces: for or against faces at all, for one gender, for good looks,
for an age near their own preference. Real feeds are driven by people on covers, and the face file
is the only place those attributes are given explicitly.

Cover text in its own right. About half of the covers carry text. Besides content words of the
category and generic words, some creators use clickbait words (a fixed set of "lure" words) and
some promo words ("follow / giveaway"). Each user has a susceptibility to lure words (some are
attracted, some repelled) and a mostly negative reaction to promo words. These words are
independent of the visual content: the text file carries signal the vector does not.

Clip length and time-of-day content. Durations come from the creator's style (3% still pictures,
duration 0); users have a preferred log-length (a third of them strongly prefer short clips).
Some categories are "evening content" (late-night food, live replays) and are clicked more in the
evening and less in the morning. Real logs show both: short-clip lovers, and content whose appeal
depends on the hour.

Pooled-CNN cover vectors with re-uploads. A vector is relu(content + nuisance + noise - 0.35) ** 1.4
times a heavy-tailed per-channel scale: non-negative, about 60% zeros, heavy-tailed. Content (the
category centre plus the photo's own deviation) is only ~40% of the pre-activation variance; the
rest is nuisance (the creator's camera/filter style, face and text overlays, brightness) and
noise. 8% of uploads are near-duplicate re-uploads of an earlier work (same content, words, faces,
duration, a slightly perturbed vector), half by another account; some test works re-upload train
works. Real covers are encoded by a CNN trained for something else, and re-posting is endemic.

A co-click, two-stage recommender with an exploration slot and position bias. Candidates come
from random walks on the click graph (user -> a work they clicked recently -> another user who
clicked it -> a work that user clicked recently in the current pool), plus a "trending" channel
(a work drawn in proportion to its clicks of the last 6 h); the feed never looks at content. A
ranker orders candidates by their smoothed click rate over the whole app; each screen of three
or more works (and a fifth of smaller ones) carries one exploration slot with a fresh upload at a
random position. Clicks fall with the position inside the screen. The sampled users are a small
part of the app: a background population (4x their number, same taste communities) clicks the
works of the last 12 h every hour, and supplies about three quarters of the click graph and most
of the ranker's counts. The recommender state is refreshed hourly from all clicks so far
(including test-window clicks, as a live system would), so which works a test user sees, and how
often a test work is shown, depends on earlier clicks, mostly other people's: a "feed echo" that
summary.json measures (feed_echo: the AUC of a work's test impression count, and the no-noise
model plus that count). The click itself does not depend on the feed, only on who sees what
where. Real feeds are collaborative, popularity-biased and explore, and a released sample is a
sliver of their users (without the background, one sampled click would decide a work's later
exposure, and the impression counts would leak the test labels).

Creators across the split. Creator activity is heavy-tailed. Test-window works are uploaded after
the train works (higher ids, disjoint set); 60% of them come from creators seen in train and 40%
from new creators. Creator quality shifts every work's click rate. Real test sets mix known and
new creators; only the known ones carry over per-creator knowledge (through content, since the
author id is not released).

Interests that shift. A quarter of users switch at a random time in the 48 h to a new taste
(60% new, 40% old); a shift before the test window only shows in the train window's last hours. Real interests drift, so per-user statistics from the train window are stale
for some users at test time.

Timeline. The timeline is click-blind: sessions start at times drawn from the user's daily
activity curve, and a user's row target is met by whole sessions picked at random across the
window (so its last hours are as busy as its first, as in a real log cut from a live app); a latent session engagement g makes sessions longer (more screens), screens
larger and gaps longer, and also raises the click logit. So batch size, session length and gaps
carry signal about clicks only through g, which exists in the world; no time is computed from a
click. Screens share one exact millisecond time.

Click model: logit = b0 + user level + user hour cycle + taste(user, category; shifted after the
user's switch time) + creator quality + work appeal + face terms + text terms + duration term +
evening term + engagement * g - position * step + noise (per impression, unobservable). Likes
and follows are drawn given a click; playing time from the clip length and taste, with rare huge
outliers. Unobservable in the files: the noise, the position within a screen (rows of a screen
are written in a random order) and g itself (only its traces in the timeline).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HOUR = 3600.0
TIME_ORIGIN_MS = 760_924_800_000  # midnight of the log's first day, in the released 1994 shift
BURN_IN_H, TRAIN_H, TEST_H = 4, 36, 12
N_CATEGORIES, N_COMMUNITIES, CONTENT_DIM, NUISANCE_DIM = 40, 10, 24, 16
VOCAB, CATEGORY_WORDS, N_LURE, N_PROMO = 60_000, 40, 150, 100


@dataclass(frozen=True)
class Story:
    """The world's scales (all dimensionless logit units unless named otherwise)."""

    target_ctr: float = 0.20
    activity_sigma: float = 0.9
    min_train_rows: int = 6
    user_level_sd: float = 0.65
    level_vs_activity: float = -0.15
    hour_amp_sd: float = 0.35
    taste_scale: float = 1.0
    taste_individual_sd: float = 0.55
    creator_quality_sd: float = 0.35
    appeal_sd: float = 0.3
    face_like_sd: float = 0.45
    gender_taste_sd: float = 0.5
    beauty_taste_mean: float = 0.25
    beauty_taste_sd: float = 0.3
    age_taste_mean: float = 0.25
    lure_taste_mean: float = 0.15
    lure_taste_sd: float = 0.7
    promo_taste_mean: float = -0.5
    promo_taste_sd: float = 0.3
    short_lover_share: float = 0.35
    evening_share: float = 0.2
    evening_amp: float = 0.5
    engagement: float = 0.35
    position_step: float = 0.09
    noise_sd: float = 0.6
    shift_share: float = 0.25
    reupload_share: float = 0.08
    rows_per_photo: float = 2.6
    test_rows_per_photo: float = 2.2
    known_creator_share: float = 0.6
    walk_candidates: int = 4
    trending_share: float = 0.15
    recent_clicks: int = 30
    fresh_hours: float = 3.0
    small_screen_explore: float = 0.2
    background_users: float = 4.0      # the rest of the app, per sampled user
    background_draws: float = 3.0      # background impressions per sampled slot, per pool and hour
    background_window_h: float = 12.0  # how long after upload the background still sees a work


# ----------------------------------------------------------------------------- helpers


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC with average ranks for ties."""
    y = np.asarray(y).astype(bool)
    ranks = pd.Series(np.asarray(score, dtype=np.float64)).rank(method="average").to_numpy()
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def group_starts(sorted_keys: np.ndarray, n: int) -> np.ndarray:
    """Start offset of each key 0..n-1 in an ascending key array."""
    return np.searchsorted(sorted_keys, np.arange(n))


def exclusive_cumsum_by_group(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Sum of the earlier values of the same group, for rows sorted by group."""
    total = np.cumsum(values) - values
    first = np.r_[True, group[1:] != group[:-1]]
    return total - np.maximum.accumulate(np.where(first, total, 0))


def in_sorted(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Membership of keys in an ascending array (np.isin without re-sorting the set)."""
    if not len(sorted_set):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    return sorted_set[at] == keys


def repeated(keys: np.ndarray) -> np.ndarray:
    """True for every occurrence of a key after its first."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    out = np.zeros(len(keys), bool)
    out[order[1:]] = k[1:] == k[:-1]
    return out


def log_normal_weights(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, n)
    return w / w.mean()


# ----------------------------------------------------------------------------- users


@dataclass
class Users:
    ids: np.ndarray
    n_train: np.ndarray
    n_test: np.ndarray
    level: np.ndarray
    hour_amp: np.ndarray
    hour_peak: np.ndarray
    active_peak: np.ndarray
    active_depth: np.ndarray
    taste: np.ndarray          # (U, categories) before the switch
    taste_after: np.ndarray    # (U, categories) after the switch
    profiles: np.ndarray       # (communities, categories) shared with the background population
    switch_s: np.ndarray       # seconds since log start; inf when the user never switches
    face_like: np.ndarray
    gender_taste: np.ndarray   # > 0 prefers male faces
    beauty_taste: np.ndarray
    age_pref: np.ndarray
    age_taste: np.ndarray
    lure_taste: np.ndarray
    promo_taste: np.ndarray
    length_pref: np.ndarray    # preferred log1p(duration)
    length_taste: np.ndarray


def community_profiles(rng: np.random.Generator) -> np.ndarray:
    """Each community loves 3-5 categories and is lukewarm-to-negative on the rest."""
    prof = rng.normal(-0.45, 0.3, (N_COMMUNITIES, N_CATEGORIES))
    for k in range(N_COMMUNITIES):
        loved = rng.choice(N_CATEGORIES, rng.integers(3, 6), replace=False)
        prof[k, loved] = rng.normal(1.1, 0.35, len(loved))
    return prof


def user_taste(rng: np.random.Generator, st: Story, prof: np.ndarray, n: int) -> np.ndarray:
    comm = rng.integers(0, N_COMMUNITIES, n)
    taste = prof[comm] + rng.normal(0, st.taste_individual_sd, (n, N_CATEGORIES))
    personal = rng.integers(0, N_CATEGORIES, n)
    taste[np.arange(n), personal] += 1.0
    return st.taste_scale * taste


def make_users(rng: np.random.Generator, st: Story, n: int, train_rpu: int, test_rpu: int) -> Users:
    activity = log_normal_weights(rng, n, st.activity_sigma)
    n_train = np.maximum(st.min_train_rows, np.round(train_rpu * activity)).astype(np.int64)
    n_test = np.maximum(1, np.round(test_rpu * activity * log_normal_weights(rng, n, 0.3))).astype(np.int64)
    prof = community_profiles(rng)
    taste = user_taste(rng, st, prof, n)
    taste_after = 0.4 * taste + 0.6 * user_taste(rng, st, prof, n)
    shifts = rng.random(n) < st.shift_share
    switch_s = np.where(shifts, rng.uniform(4, TRAIN_H + TEST_H - 4, n) * HOUR, np.inf)
    evening_people = rng.random(n) < 0.7
    short = rng.random(n) < st.short_lover_share
    return Users(
        ids=np.sort(rng.choice(60_000, n, replace=False)).astype(np.int64),
        n_train=n_train,
        n_test=n_test,
        level=rng.normal(0, st.user_level_sd, n) + st.level_vs_activity * np.log(activity),
        hour_amp=np.abs(rng.normal(0, st.hour_amp_sd, n)),
        hour_peak=rng.uniform(0, 24, n),
        active_peak=np.where(evening_people, rng.normal(21, 2, n), rng.normal(13, 3, n)) % 24,
        active_depth=rng.uniform(0.4, 0.95, n),
        taste=taste,
        profiles=prof,
        taste_after=taste_after,
        switch_s=switch_s,
        face_like=rng.normal(0, st.face_like_sd, n),
        gender_taste=rng.normal(0, st.gender_taste_sd, n),
        beauty_taste=rng.normal(st.beauty_taste_mean, st.beauty_taste_sd, n),
        age_pref=np.clip(rng.normal(25, 7, n), 12, 60),
        age_taste=np.abs(rng.normal(st.age_taste_mean, 0.15, n)),
        lure_taste=rng.normal(st.lure_taste_mean, st.lure_taste_sd, n),
        promo_taste=rng.normal(st.promo_taste_mean, st.promo_taste_sd, n),
        length_pref=np.where(short, np.log1p(8.0), rng.normal(np.log1p(25.0), 0.5, n)),
        length_taste=np.where(short, rng.uniform(0.3, 0.7, n), rng.uniform(0.05, 0.25, n)),
    )


# ----------------------------------------------------------------------------- creators and works


@dataclass
class Creators:
    weight: np.ndarray
    home: np.ndarray           # (C, 2) home categories
    quality: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    beauty: np.ndarray
    face_rate: np.ndarray
    text_rate: np.ndarray
    bait_rate: np.ndarray
    promo_rate: np.ndarray
    length_mu: np.ndarray
    style: np.ndarray          # (C, NUISANCE_DIM) camera / filter style


def make_creators(rng: np.random.Generator, st: Story, n: int) -> Creators:
    cat_pop = rng.dirichlet(np.full(N_CATEGORIES, 0.8))
    return Creators(
        weight=(rng.pareto(1.3, n) + 1.0),
        home=rng.choice(N_CATEGORIES, (n, 2), p=cat_pop),
        quality=rng.normal(0, st.creator_quality_sd, n),
        gender=(rng.random(n) < 0.45).astype(np.int64),
        age=np.clip(rng.normal(26, 8, n), 5, 70),
        beauty=np.clip(rng.normal(60, 15, n), 0, 99),
        face_rate=rng.beta(1.0, 1.6, n),
        text_rate=rng.beta(2.0, 2.3, n),
        bait_rate=rng.beta(0.6, 3.5, n),
        promo_rate=rng.beta(0.4, 5.0, n),
        length_mu=rng.normal(np.log(14.0), 0.6, n),
        style=rng.normal(0, 1, (n, NUISANCE_DIM)),
    )


@dataclass
class Photos:
    n_train: int
    upload_s: np.ndarray
    creator: np.ndarray
    category: np.ndarray
    evening: np.ndarray
    appeal: np.ndarray
    duration: np.ndarray
    parent: np.ndarray         # re-upload of this index, -1 for originals
    has_face: np.ndarray
    face_ptr: np.ndarray       # faces of work i are face_*[face_ptr[i]:face_ptr[i+1]]
    face_share: np.ndarray
    face_gender: np.ndarray
    face_age: np.ndarray
    face_beauty: np.ndarray
    male_frac: np.ndarray
    lead_age: np.ndarray
    top_beauty: np.ndarray
    word_ptr: np.ndarray
    words: np.ndarray
    has_lure: np.ndarray
    has_promo: np.ndarray
    content: np.ndarray        # (N, CONTENT_DIM)
    nuisance: np.ndarray       # (N, NUISANCE_DIM)


def pick_creators(rng: np.random.Generator, st: Story, cr: Creators, n_train: int, n_test: int,
                  n_old: int) -> np.ndarray:
    """Train works from the old creators; test works 60/40 from old and new ones, by weight."""
    def draw(lo: int, hi: int, k: int) -> np.ndarray:
        cdf = np.cumsum(cr.weight[lo:hi])
        return lo + np.searchsorted(cdf, rng.random(k) * cdf[-1])

    test_old = rng.random(n_test) < st.known_creator_share
    test = np.where(test_old, draw(0, n_old, n_test), draw(n_old, len(cr.weight), n_test))
    return np.r_[draw(0, n_old, n_train), test]


def draw_faces(rng: np.random.Generator, cr: Creators, creator: np.ndarray,
               has_face: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ragged face lists: the first face is the creator's persona, the others bystanders."""
    n_faces = np.where(has_face, np.minimum(rng.geometric(0.8, len(creator)), 20), 0)
    group = has_face & (rng.random(len(creator)) < 0.01)
    n_faces[group] = rng.integers(5, 21, group.sum())
    ptr = np.r_[0, np.cumsum(n_faces)]
    owner = np.repeat(np.arange(len(creator)), n_faces)
    first = np.zeros(len(owner), bool)
    first[ptr[:-1][n_faces > 0]] = True
    c = creator[owner]
    m = len(owner)
    gender = np.where(first, cr.gender[c], (rng.random(m) < 0.5).astype(np.int64))
    age = np.where(first, cr.age[c] + rng.normal(0, 2, m), np.clip(rng.normal(27, 12, m), 1, 80))
    beauty = np.where(first, cr.beauty[c] + rng.normal(0, 6, m), rng.normal(55, 18, m))
    share = np.where(first, rng.beta(2.0, 4.0, m), rng.beta(1.2, 8.0, m))
    return ptr, share, gender, np.clip(np.round(age), 1, 90), np.clip(np.round(beauty), 0, 99), owner


def face_summaries(n: int, ptr: np.ndarray, share: np.ndarray, gender: np.ndarray, age: np.ndarray,
                   beauty: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share-weighted male fraction, the largest face's age, the best appearance score."""
    w_sum = np.bincount(owner, share, n)
    male = np.bincount(owner, share * gender, n) / np.maximum(w_sum, 1e-9)
    top = np.zeros(n)
    np.maximum.at(top, owner, beauty)
    lead_age = np.zeros(n)
    order = np.lexsort((-share, owner))
    firsts = order[np.r_[True, owner[order][1:] != owner[order][:-1]]] if len(owner) else order
    lead_age[owner[firsts]] = age[firsts]
    return male, lead_age, top


def draw_words(rng: np.random.Generator, cr: Creators, creator: np.ndarray,
               category: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cover words: category words, Zipf generic words, and the creator's lure / promo habits."""
    n = len(creator)
    perm = rng.permutation(np.arange(1, VOCAB + 1))            # anonymised ids, 0 kept apart
    lure_ids = perm[:N_LURE]
    promo_ids = perm[N_LURE:N_LURE + N_PROMO]
    cat_ids = perm[N_LURE + N_PROMO:N_LURE + N_PROMO + N_CATEGORIES * CATEGORY_WORDS].reshape(N_CATEGORIES, -1)
    generic = perm[N_LURE + N_PROMO + N_CATEGORIES * CATEGORY_WORDS:]
    has_text = rng.random(n) < cr.text_rate[creator]
    lure = has_text & (rng.random(n) < cr.bait_rate[creator])
    promo = has_text & (rng.random(n) < cr.promo_rate[creator])
    n_plain = np.where(has_text, rng.poisson(2.2, n) + 1, 0)
    n_lure = np.where(lure, rng.integers(1, 3, n), 0)
    n_promo = np.where(promo, 1, 0)
    counts = n_plain + n_lure + n_promo
    ptr = np.r_[0, np.cumsum(counts)]
    owner = np.repeat(np.arange(n), counts)
    rank_in = np.arange(len(owner)) - ptr[owner]
    kind = np.where(rank_in < n_lure[owner], 1, np.where(rank_in < n_lure[owner] + n_promo[owner], 2, 0))
    m = len(owner)
    zipf = np.minimum(rng.zipf(1.25, m), len(generic)) - 1
    plain = np.where(rng.random(m) < 0.4, cat_ids[category[owner], rng.integers(0, CATEGORY_WORDS, m)],
                     generic[zipf])
    plain = np.where((rng.random(m) < 0.002) & (counts[owner] > 1), 0, plain)   # 0 as an ordinary word
    words = np.select([kind == 1, kind == 2], [lure_ids[rng.integers(0, N_LURE, m)],
                                               promo_ids[rng.integers(0, N_PROMO, m)]], plain)
    shuffle = np.lexsort((rng.random(m), owner))               # lure words anywhere in the line
    return ptr, words[shuffle], lure, promo


def make_photos(rng: np.random.Generator, st: Story, n_train: int, n_test: int, n_old_creators: int,
                n_new_creators: int) -> tuple[Photos, Creators]:
    cr = make_creators(rng, st, n_old_creators + n_new_creators)
    n = n_train + n_test
    upload = np.r_[np.sort(rng.uniform(-8, TRAIN_H, n_train)), np.sort(rng.uniform(TRAIN_H - 2, TRAIN_H + TEST_H, n_test))]
    creator = pick_creators(rng, st, cr, n_train, n_test, n_old_creators)
    category = np.where(rng.random(n) < 0.85, cr.home[creator, rng.integers(0, 2, n)], rng.integers(0, N_CATEGORIES, n))
    evening_cats = rng.random(N_CATEGORIES) < st.evening_share
    centre = rng.normal(0, 1, (N_CATEGORIES, CONTENT_DIM))
    content = centre[category] + 0.6 * rng.normal(0, 1, (n, CONTENT_DIM))
    length_s = np.exp(rng.normal(cr.length_mu[creator], 0.5))
    duration = np.where(rng.random(n) < 0.03, 0, np.clip(np.round(length_s), 1, 600)).astype(np.int64)
    has_face = rng.random(n) < cr.face_rate[creator]
    appeal = rng.normal(0, st.appeal_sd, n)
    # near-duplicate re-uploads copy an earlier work; half of them by another account
    parent = np.full(n, -1)
    dup = (rng.random(n) < st.reupload_share) & (np.arange(n) > 50)
    parent[dup] = (rng.random(dup.sum()) * np.flatnonzero(dup)).astype(np.int64)
    parent = resolve_roots(parent)
    same_account = dup & (rng.random(n) < 0.5)
    creator[same_account] = creator[parent[same_account]]
    for arr in (category, content, duration, has_face, appeal):
        arr[dup] = arr[parent[dup]]
    f_ptr, f_share, f_gender, f_age, f_beauty, f_owner = draw_faces(rng, cr, creator, has_face)
    f_ptr, f_share, f_gender, f_age, f_beauty, f_owner = copy_ragged(
        parent, f_ptr, f_share, f_gender, f_age, f_beauty)
    male, lead_age, top = face_summaries(n, f_ptr, f_share, f_gender, f_age, f_beauty, f_owner)
    w_ptr, words, lure, promo = draw_words(rng, cr, creator, category)
    w_ptr, words, _ = copy_ragged(parent, w_ptr, words)
    lure[dup], promo[dup] = lure[parent[dup]], promo[parent[dup]]
    n_faces = np.diff(f_ptr)
    nuisance = 0.7 * cr.style[creator] + 0.7 * rng.normal(0, 1, (n, NUISANCE_DIM))
    nuisance[:, 0] = 1.5 * (n_faces > 0) + 0.3 * np.minimum(n_faces, 5)
    nuisance[:, 1] = 1.5 * (np.diff(w_ptr) > 0)
    nuisance[:, 2] -= 0.8 * evening_cats[category]
    nuisance[dup] = nuisance[parent[dup]] + 0.15 * rng.normal(0, 1, (dup.sum(), NUISANCE_DIM))
    photos = Photos(
        n_train=n_train, upload_s=upload * HOUR, creator=creator, category=category,
        evening=evening_cats[category].astype(np.float64), appeal=appeal, duration=duration, parent=parent,
        has_face=n_faces > 0, face_ptr=f_ptr, face_share=f_share, face_gender=f_gender, face_age=f_age,
        face_beauty=f_beauty, male_frac=male, lead_age=lead_age, top_beauty=top, word_ptr=w_ptr, words=words,
        has_lure=lure, has_promo=promo, content=content, nuisance=nuisance,
    )
    return photos, cr


def resolve_roots(parent: np.ndarray) -> np.ndarray:
    """Follow re-upload chains to the original work (parents always have lower indices)."""
    root = parent.copy()
    while True:
        has = root >= 0
        nxt = np.where(has, parent[np.maximum(root, 0)], -1)
        move = has & (nxt >= 0)
        if not move.any():
            return root
        root[move] = nxt[move]


def copy_ragged(parent: np.ndarray, ptr: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ragged lists where each re-upload takes its original's list; returns ptr, cols..., owner."""
    src = np.where(parent >= 0, parent, np.arange(len(parent)))
    counts = np.diff(ptr)[src]
    new_ptr = np.r_[0, np.cumsum(counts)]
    owner = np.repeat(np.arange(len(parent)), counts)
    take = ptr[src][owner] + (np.arange(len(owner)) - new_ptr[owner])
    return (new_ptr, *[c[take] for c in cols], owner)


# ----------------------------------------------------------------------------- timeline


def diurnal_times(rng: np.random.Generator, peak: np.ndarray, depth: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Session start times (s) in [t0, t1) from each session's user's daily activity curve."""
    t = rng.uniform(t0, t1, len(peak))
    todo = np.arange(len(peak))
    while len(todo):
        hod = (t[todo] / HOUR) % 24
        accept = rng.random(len(todo)) * (1 + depth[todo]) < 1 + depth[todo] * np.cos(2 * np.pi * (hod - peak[todo]) / 24)
        todo = todo[~accept]
        t[todo] = rng.uniform(t0, t1, len(todo))
    return t


@dataclass
class Screens:
    user: np.ndarray
    time_s: np.ndarray
    size: np.ndarray
    engagement: np.ndarray


def window_screens(rng: np.random.Generator, users: Users, target: np.ndarray, t0: float, t1: float) -> Screens:
    """Click-blind sessions of screens for every user in [t0, t1), trimmed to the user's row target."""
    n_users = len(target)
    n_sess = np.where(target > 0, np.ceil(target / 12.0 * 1.6).astype(np.int64) + 2, 0)
    su = np.repeat(np.arange(n_users), n_sess)
    start = diurnal_times(rng, users.active_peak[su], users.active_depth[su], t0, t1)
    order = np.lexsort((start, su))
    su, start = su[order], start[order]
    g = rng.normal(0, 1, len(su))
    n_scr = np.minimum(rng.geometric(np.minimum(1.0, np.exp(-1.2 - 0.45 * g))), 300)
    sc = np.repeat(np.arange(len(su)), n_scr)
    size = np.minimum(1 + rng.poisson(np.exp(0.95 + 0.3 * g[sc])), 20)
    gap = np.exp(rng.normal(np.log(25.0) + 0.4 * g[sc], 0.8))
    gap[np.r_[True, sc[1:] != sc[:-1]]] = 0.0
    offset = exclusive_cumsum_by_group(gap, sc) + gap
    duration = np.bincount(sc, gap, len(su)) + 60.0
    # sessions of one user do not overlap: t' = D + cummax(t - D) within the user
    d_before = exclusive_cumsum_by_group(duration, su)
    shifted = np.maximum.accumulate(start - d_before + su * 1e9) - su * 1e9
    sess_start = d_before + shifted
    t = sess_start[sc] + offset
    keep = t < t1
    sc, size, t = sc[keep], size[keep], t[keep]
    # the user's row target is met by whole sessions taken in a random order (not the earliest
    # first, which would leave the window's last hours empty), the last one cut short
    pick = np.lexsort((t, rng.random(len(su))[sc], su[sc]))
    sc, size, t = sc[pick], size[pick], t[pick]
    u = su[sc]
    before = exclusive_cumsum_by_group(size, u)
    keep = before < target[u]
    sc, t, u = sc[keep], t[keep], u[keep]
    size = np.minimum(size[keep], target[u] - before[keep])
    by_time = np.lexsort((t, u))
    sc, size, t, u = sc[by_time], size[by_time], t[by_time], u[by_time]
    return Screens(user=u, time_s=np.floor(t * 1000) / 1000, size=size, engagement=g[sc])


# ----------------------------------------------------------------------------- feed


@dataclass
class Slots:
    user: np.ndarray
    time_s: np.ndarray
    screen: np.ndarray
    engagement: np.ndarray
    explore: np.ndarray
    window: np.ndarray         # 0 burn-in, 1 train, 2 test
    photo: np.ndarray
    position: np.ndarray
    score: np.ndarray
    source: np.ndarray         # 0 exploration / fresh fill, 1 co-click walk, 2 trending


def make_slots(rng: np.random.Generator, st: Story, parts: list[tuple[Screens, int]]) -> Slots:
    user, t, g, size, window = (np.concatenate(x) for x in zip(*[
        (s.user, s.time_s, s.engagement, s.size, np.full(len(s.user), w)) for s, w in parts]))
    screen = np.repeat(np.arange(len(user)), size)
    first = np.r_[0, np.cumsum(size)[:-1]]
    explore_at = np.where((size >= 3) | (rng.random(len(size)) < st.small_screen_explore),
                          first + (rng.random(len(size)) * size).astype(np.int64), -1)
    explore = np.zeros(len(screen), bool)
    explore[explore_at[explore_at >= 0]] = True
    n = len(screen)
    return Slots(user=user[screen], time_s=t[screen], screen=screen, engagement=g[screen], explore=explore,
                 window=window[screen], photo=np.full(n, -1), position=np.zeros(n, np.int64),
                 score=np.zeros(n), source=np.zeros(n, np.int8))


class ClickGraph:
    """The recommender's hourly snapshot of who clicked what (the only thing candidate generation reads)."""

    def __init__(self, n_users: int, n_photos: int, users: np.ndarray, photos: np.ndarray,
                 hours: np.ndarray, pool_lo: int, pool_hi: int, now_h: float):
        o = np.argsort(users, kind="stable")
        self.by_user = photos[o]
        self.u_start = group_starts(users[o], n_users)
        self.u_count = np.bincount(users, minlength=n_users)
        o = np.argsort(photos, kind="stable")
        self.by_photo = users[o]
        self.p_start = group_starts(photos[o], n_photos)
        self.p_count = np.bincount(photos, minlength=n_photos)
        in_pool = (photos >= pool_lo) & (photos < pool_hi)
        pu, pp = users[in_pool], photos[in_pool]
        o = np.argsort(pu, kind="stable")
        self.pool_by_user = pp[o]
        self.pool_start = group_starts(pu[o], n_users)
        self.pool_count = np.bincount(pu, minlength=n_users)
        self.trending = pp[hours[in_pool] >= now_h - 6]

    @staticmethod
    def recent(rng: np.random.Generator, flat: np.ndarray, start: np.ndarray, count: np.ndarray, who: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """One of the last k clicks of each `who` (and whether they have any)."""
        c = count[who]
        pick = start[who] + c - 1 - (rng.random(len(who)) * np.minimum(c, k)).astype(np.int64)
        return flat[np.clip(pick, 0, max(len(flat) - 1, 0))] if len(flat) else np.zeros(len(who), np.int64), c > 0

    def walk(self, rng: np.random.Generator, u: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """user -> recent click q -> another clicker v of q -> v's recent click in the pool."""
        q, ok = self.recent(rng, self.by_user, self.u_start, self.u_count, u, k)
        c2 = self.p_count[q]
        v = self.by_photo[np.clip(self.p_start[q] + (rng.random(len(u)) * c2).astype(np.int64), 0,
                                  max(len(self.by_photo) - 1, 0))] if len(self.by_photo) else u
        ok &= v != u
        p, ok3 = self.recent(rng, self.pool_by_user, self.pool_start, self.pool_count, v, k)
        return p, ok & ok3


def fresh_photos(rng: np.random.Generator, st: Story, ph: Photos, lo: int, hi: int, now_s: float, k: int) -> np.ndarray:
    up = ph.upload_s[lo:hi]
    a = lo + np.searchsorted(up, now_s - st.fresh_hours * HOUR)
    b = lo + np.searchsorted(up, now_s)
    if b - a < 50:
        a = lo
    b = max(b, a + 1)
    return rng.integers(a, b, k)


def serve_epoch(rng: np.random.Generator, st: Story, ph: Photos, graph: ClickGraph, slot_idx: np.ndarray,
                sl: Slots, imp: np.ndarray, clk: np.ndarray, seen: np.ndarray, lo: int, hi: int, now_s: float) -> None:
    """Fill the epoch's slots: walk candidates + trending, ranked by smoothed CTR; exploration slots fresh."""
    m = st.walk_candidates
    u_slot = sl.user[slot_idx]
    u = np.repeat(u_slot, m)
    cand, ok = graph.walk(rng, u, st.recent_clicks)
    trend = ~ok | (rng.random(len(u)) < st.trending_share)
    if len(graph.trending):
        cand = np.where(trend, graph.trending[rng.integers(0, len(graph.trending), len(u))], cand)
    else:
        cand = np.where(trend, fresh_photos(rng, st, ph, lo, hi, now_s, len(u)), cand)
    score = np.log((clk[cand] + 0.5) / (imp[cand] + 3.0)) + 0.5 * rng.gumbel(size=len(u))
    key = u.astype(np.int64) << 32 | cand
    score[in_sorted(key, seen)] = -np.inf
    best = np.argmax(score.reshape(-1, m), axis=1)
    photo = cand.reshape(-1, m)[np.arange(len(slot_idx)), best]
    sc = score.reshape(-1, m)[np.arange(len(slot_idx)), best]
    source = np.where(trend.reshape(-1, m)[np.arange(len(slot_idx)), best], 2, 1)
    redo = sl.explore[slot_idx] | ~np.isfinite(sc)
    for _ in range(3):
        photo[redo] = fresh_photos(rng, st, ph, lo, hi, now_s, int(redo.sum()))
        key = u_slot.astype(np.int64) << 32 | photo
        redo = repeated(key) | in_sorted(key, seen)
        if not redo.any():
            break
    photo[redo] = -1
    sl.photo[slot_idx] = photo
    sl.source[slot_idx] = np.where(sl.explore[slot_idx] | ~np.isfinite(sc), 0, source)
    sl.score[slot_idx] = np.where(sl.explore[slot_idx] | ~np.isfinite(sc), -np.inf, sc)


def background_clicks(rng: np.random.Generator, st: Story, ph: Photos, cr: Creators, taste: np.ndarray,
                      intercept: float, n_draws: int, lo: int, hi: int, now_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unsampled rest of the app in one hour: (background user, work, clicked) for works of one pool
    uploaded in the last background_window_h hours, clicked from taste, creator quality and appeal."""
    up = ph.upload_s[lo:hi]
    a = lo + np.searchsorted(up, now_s - st.background_window_h * HOUR)
    b = lo + np.searchsorted(up, now_s)
    if b <= a or n_draws <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    who = rng.integers(0, len(taste), n_draws)
    p = rng.integers(a, b, n_draws)
    z = (intercept + taste[who, ph.category[p]] + cr.quality[ph.creator[p]] + ph.appeal[p]
         + st.noise_sd * rng.normal(0, 1, n_draws))
    return who, p, rng.random(n_draws) < sigmoid(z)


# ----------------------------------------------------------------------------- click model


def logit_terms(st: Story, us: Users, ph: Photos, cr: Creators, u: np.ndarray, p: np.ndarray, t: np.ndarray,
                pos: np.ndarray, g: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    """The click logit's additive terms (without the global intercept)."""
    hod = (t / HOUR) % 24
    cat = ph.category[p]
    after = t >= us.switch_s[u]
    taste = np.where(after, us.taste_after[u, cat], us.taste[u, cat])
    face = ph.has_face[p]
    face_term = face * (us.face_like[u] + us.gender_taste[u] * (2 * ph.male_frac[p] - 1)
                        + us.beauty_taste[u] * (ph.top_beauty[p] - 60) / 20
                        - us.age_taste[u] * np.abs(ph.lead_age[p] - us.age_pref[u]) / 10)
    text_term = us.lure_taste[u] * ph.has_lure[p] + us.promo_taste[u] * ph.has_promo[p]
    length = -us.length_taste[u] * (np.log1p(ph.duration[p]) - us.length_pref[u]) ** 2
    return {
        "user_level": us.level[u],
        "user_hour": us.hour_amp[u] * np.cos(2 * np.pi * (hod - us.hour_peak[u]) / 24),
        "taste": taste,
        "taste_shift": taste - us.taste[u, cat],
        "creator_quality": cr.quality[ph.creator[p]],
        "work_appeal": ph.appeal[p],
        "faces": face_term,
        "cover_text": text_term,
        "duration": length,
        "evening_content": st.evening_amp * ph.evening[p] * np.cos(2 * np.pi * (hod - 22) / 24),
        "session_engagement": st.engagement * g,
        "position": -st.position_step * pos,
        "impression_noise": st.noise_sd * noise,
    }


NOT_SUMMED = {"taste_shift"}   # a part of "taste", reported on its own


def total_logit(terms: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> np.ndarray:
    return sum(v for k, v in terms.items() if k not in NOT_SUMMED and k not in skip)


def calibrate_intercept(logit: np.ndarray, target: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sigmoid(logit + mid).mean() < target else (lo, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------- simulation


@dataclass
class World:
    story: Story
    users: Users
    creators: Creators
    photos: Photos
    slots: Slots
    terms: dict
    intercept: float
    p_click: np.ndarray
    click: np.ndarray
    feed_stats: dict


def simulate(seed: int, n_users: int, train_rpu: int, test_rpu: int, st: Story = Story()) -> World:
    rng = np.random.default_rng(seed)
    us = make_users(rng, st, n_users, train_rpu, test_rpu)
    burn_target = np.round(us.n_train * BURN_IN_H / TRAIN_H).astype(np.int64)
    n_train_ph = int(np.ceil((us.n_train.sum() + burn_target.sum()) / st.rows_per_photo))
    n_test_ph = int(np.ceil(us.n_test.sum() / st.test_rows_per_photo))
    n_old = max(20, n_train_ph // 8)
    ph, cr = make_photos(rng, st, n_train_ph, n_test_ph, n_old, max(10, int(n_test_ph * (1 - st.known_creator_share) / 6)))
    parts = [(window_screens(rng, us, burn_target, -BURN_IN_H * HOUR, 0.0), 0),
             (window_screens(rng, us, us.n_train, 0.0, TRAIN_H * HOUR), 1),
             (window_screens(rng, us, us.n_test, TRAIN_H * HOUR, (TRAIN_H + TEST_H) * HOUR), 2)]
    sl = make_slots(rng, st, parts)
    n_ph = len(ph.upload_s)
    noise = rng.normal(0, 1, len(sl.user))
    epoch = np.floor(sl.time_s / HOUR).astype(np.int64)
    order = np.argsort(epoch, kind="stable")
    bounds = np.searchsorted(epoch[order], np.arange(-BURN_IN_H, TRAIN_H + TEST_H + 1))
    imp, clk = np.zeros(n_ph, np.int64), np.zeros(n_ph, np.int64)   # the whole app's counts, as the ranker sees them
    bg_taste = user_taste(rng, st, us.profiles, int(st.background_users * n_users))
    n_graph_users = n_users + len(bg_taste)
    bg_draws = int(st.background_draws * len(sl.user) / (BURN_IN_H + TRAIN_H + TEST_H))
    sample_clicks = 0
    clicks_u, clicks_p, clicks_h = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    seen = np.zeros(0, np.int64)
    p_click = np.zeros(len(sl.user))
    click = np.zeros(len(sl.user), bool)
    intercept = None
    for e in range(len(bounds) - 1):
        idx = order[bounds[e]:bounds[e + 1]]
        if not len(idx):
            continue
        h = e - BURN_IN_H
        lo, hi = (ph.n_train, n_ph) if h >= TRAIN_H else (0, ph.n_train)
        graph = ClickGraph(n_graph_users, n_ph, np.concatenate(clicks_u), np.concatenate(clicks_p),
                           np.concatenate(clicks_h), lo, hi, h)
        serve_epoch(rng, st, ph, graph, idx, sl, imp, clk, seen, lo, hi, h * HOUR)
        idx = idx[sl.photo[idx] >= 0]
        sl.position[idx] = screen_positions(rng, sl, idx)
        terms = logit_terms(st, us, ph, cr, sl.user[idx], sl.photo[idx], sl.time_s[idx], sl.position[idx],
                            sl.engagement[idx], noise[idx])
        z = total_logit(terms)
        if intercept is None:
            intercept = calibrate_intercept(z, st.target_ctr) - 0.3   # the feed's matching lifts the CTR later
        p_click[idx] = sigmoid(z + intercept)
        click[idx] = rng.random(len(idx)) < p_click[idx]
        np.add.at(imp, sl.photo[idx], 1)
        c = idx[click[idx]]
        np.add.at(clk, sl.photo[c], 1)
        clicks_u.append(sl.user[c])
        clicks_p.append(sl.photo[c])
        clicks_h.append(np.full(len(c), float(h)))
        sample_clicks += len(c)
        for pool_lo, pool_hi in ((0, ph.n_train), (ph.n_train, n_ph)):
            who, bp, bc = background_clicks(rng, st, ph, cr, bg_taste, intercept, bg_draws, pool_lo, pool_hi, h * HOUR)
            np.add.at(imp, bp, 1)
            np.add.at(clk, bp[bc], 1)
            clicks_u.append(n_users + who[bc])
            clicks_p.append(bp[bc])
            clicks_h.append(np.full(int(bc.sum()), float(h)))
        seen = np.sort(np.concatenate([seen, sl.user[idx].astype(np.int64) << 32 | sl.photo[idx]]), kind="stable")
    valid = sl.photo >= 0
    terms = logit_terms(st, us, ph, cr, sl.user, np.maximum(sl.photo, 0), sl.time_s, sl.position, sl.engagement, noise)
    all_clicks = sum(len(c) for c in clicks_u)
    stats = {"background_users": len(bg_taste), "sampled_share_of_graph_clicks": sample_clicks / max(all_clicks, 1),
             "slots_dropped_as_duplicates": int((~valid).sum()),
             "exploration_slot_share": float(sl.explore[valid].mean())}
    for w_, name in ((1, "train"), (2, "test")):
        src = sl.source[valid & (sl.window == w_)]
        stats[f"{name}_source_shares"] = {k: float((src == i).mean()) for i, k in enumerate(("fresh", "co_click_walk", "trending"))}
    return World(st, us, cr, ph, sl, terms, float(intercept), p_click, click & valid, stats)


def screen_positions(rng: np.random.Generator, sl: Slots, idx: np.ndarray) -> np.ndarray:
    """Position inside the screen for the epoch's slots: ranked works by score, exploration at a random place."""
    scr, expl, score = sl.screen[idx], sl.explore[idx], sl.score[idx]
    order = np.lexsort((-score, expl, scr))
    s_sorted = scr[order]
    start = np.searchsorted(s_sorted, s_sorted, side="left")
    rank = np.empty(len(idx), np.int64)
    rank[order] = np.arange(len(idx)) - start
    inv = np.r_[0, np.cumsum(s_sorted[1:] != s_sorted[:-1])][np.argsort(order)]
    size = np.bincount(inv)
    has_explore = np.bincount(inv, expl, len(size)) > 0
    explore_pos = (rng.random(len(size)) * size).astype(np.int64)
    ep = explore_pos[inv]
    ranked = np.where(has_explore[inv] & (rank >= ep), rank + 1, rank)
    return np.where(expl, ep, ranked)


# ----------------------------------------------------------------------------- outcomes and writing


def outcomes(rng: np.random.Generator, w: World, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Like, follow and playing time of the given rows (zero where not clicked)."""
    sl, ph = w.slots, w.photos
    clicked = w.click[rows]
    taste = w.terms["taste"][rows]
    like = clicked & (rng.random(len(rows)) < sigmoid(-4.6 + 0.8 * taste + w.terms["creator_quality"][rows]))
    follow = clicked & (rng.random(len(rows)) < sigmoid(-5.7 + 0.6 * taste + 1.5 * w.terms["creator_quality"][rows]))
    dur = ph.duration[sl.photo[rows]]
    frac = rng.beta(1.2 + np.clip(taste, 0, 3), 1.5, len(rows)) * np.where(rng.random(len(rows)) < 0.1, rng.uniform(1, 4, len(rows)), 1)
    play = np.where(dur > 0, np.round(dur * frac), np.round(rng.exponential(6, len(rows))))
    outlier = rng.random(len(rows)) < 0.0005
    play = np.where(outlier, np.minimum(np.round(rng.lognormal(9, 2, len(rows))), 1_912_441), play)
    return {"like": like.astype(np.int64), "follow": follow.astype(np.int64),
            "playing_time": np.where(clicked, play, 0).astype(np.int64)}


def anonymise_photo_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Increasing ids with gaps (test ids above train ids since the index is upload order)."""
    return 1_000 + np.cumsum(rng.integers(1, 40, n)).astype(np.int64)


def write_tsv(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, sep="\t", header=False, index=False)


def face_lines(ph: Photos, idx: np.ndarray, ids: np.ndarray) -> list[str]:
    out = []
    for i in idx[ph.has_face[idx]]:
        a, b = ph.face_ptr[i], ph.face_ptr[i + 1]
        faces = ", ".join(f"[{s:.4g}, {g}, {ag}, {be}]" for s, g, ag, be in zip(
            ph.face_share[a:b], ph.face_gender[a:b], ph.face_age[a:b].astype(int), ph.face_beauty[a:b].astype(int)))
        out.append(f"{ids[i]}\t[{faces}]\n")
    return out


def text_lines(ph: Photos, idx: np.ndarray, ids: np.ndarray) -> list[str]:
    w = ph.words.astype(str)
    return [f"{ids[i]}\t{','.join(w[ph.word_ptr[i]:ph.word_ptr[i + 1]]) or '0'}\n" for i in idx]


def write_visual_zip(path: Path, folder: str, ph: Photos, idx: np.ndarray, ids: np.ndarray, dim: int,
                     seed: int) -> None:
    """One npy per work named by the bare photo id, shape [1, dim] float32: a pooled-CNN-like feature."""
    rng = np.random.default_rng(seed)           # fixed projections, shared by train and test
    w_content = rng.normal(0, 1 / np.sqrt(CONTENT_DIM), (CONTENT_DIM, dim)).astype(np.float32)
    w_nuis = rng.normal(0, 0.9 / np.sqrt(NUISANCE_DIM), (NUISANCE_DIM, dim)).astype(np.float32)
    scale = rng.lognormal(-0.5, 0.6, dim).astype(np.float32)
    noise_rng = np.random.default_rng(seed + 1 + int(idx[0]) if len(idx) else seed)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((1, dim), np.float32), allow_pickle=False)
    header = buf.getvalue()[:-4 * dim]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for a in range(0, len(idx), 4096):
            chunk = idx[a:a + 4096]
            pre = ph.content[chunk].astype(np.float32) @ w_content + ph.nuisance[chunk].astype(np.float32) @ w_nuis
            pre += noise_rng.standard_normal(pre.shape, dtype=np.float32) * 0.8
            vec = np.maximum(pre - 0.35, 0) ** 1.4 * scale
            for i, row in zip(chunk, vec):
                zf.writestr(zipfile.ZipInfo(f"{folder}/{ids[i]}", (1994, 2, 1, 0, 0, 0)), header + row.tobytes())


def write_world(w: World, out: Path, dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + 7)
    sl, ph = w.slots, w.photos
    ids = anonymise_photo_ids(rng, len(ph.upload_s))
    uid = w.users.ids
    counts = {}
    for window, name in ((1, "train"), (2, "test")):
        rows = np.flatnonzero((sl.window == window) & (sl.photo >= 0))
        rows = rows[np.lexsort((rng.random(len(rows)), sl.time_s[rows], sl.user[rows]))]   # screens in random order
        p = sl.photo[rows]
        df = pd.DataFrame({"user_id": uid[sl.user[rows]], "photo_id": ids[p]})
        if window == 1:
            df["click"] = w.click[rows].astype(np.int64)
            for k, v in outcomes(rng, w, rows).items():
                df[k] = v
        df["time"] = TIME_ORIGIN_MS + np.round(sl.time_s[rows] * 1000).astype(np.int64)
        if window == 1:
            df["playing_time"] = df.pop("playing_time")
        df["duration_time"] = ph.duration[p]
        write_tsv(out / name / f"{name}_interaction.txt", df)
        if window == 1:   # the true click probability of every train row, line for line (to read a validation's rows)
            write_tsv(out / "ground_truth" / "train_p_click.txt",
                      pd.DataFrame({"user_id": df["user_id"], "photo_id": df["photo_id"], "time": df["time"],
                                    "p_click": np.round(w.p_click[rows], 6)}))
        used = np.flatnonzero(np.bincount(p, minlength=len(ids)))
        (out / name / f"{name}_face.txt").write_text("".join(face_lines(ph, used, ids)))
        (out / name / f"{name}_text.txt").write_text("".join(text_lines(ph, used, ids)))
        write_visual_zip(out / name / f"final_visual_{name}.zip", f"final_visual_{name}", ph, used, ids, dim, seed + 11)
        imps = np.bincount(p, minlength=len(ids))[used]
        counts[name] = {"rows": int(len(rows)), "photos": int(len(used)), "users": int((np.bincount(sl.user[rows]) > 0).sum()),
                        "click_rate": float(w.click[rows].mean()),
                        "impressions_per_photo": {"median": float(np.median(imps)), "mean": float(imps.mean()),
                                                  "max": int(imps.max())},
                        "faced_photo_share": float(ph.has_face[used].mean()),
                        "texted_photo_share": float((np.diff(ph.word_ptr)[used] > 0).mean())}
        if window == 2:
            truth = pd.DataFrame({"user_id": df["user_id"], "photo_id": df["photo_id"],
                                  "click": w.click[rows].astype(np.int64), "p_click": np.round(w.p_click[rows], 6)})
            write_tsv(out / "ground_truth" / "test_ground_truth.txt", truth)
            known = np.zeros(len(w.creators.weight), bool)
            known[ph.creator[sl.photo[(sl.window == 1) & (sl.photo >= 0)]]] = True
            counts["test"]["rows_by_creator_seen_in_train"] = float(known[ph.creator[p]].mean())
            counts["test"]["reuploads_of_train_works"] = float(((ph.parent[p] >= 0) & (ph.parent[p] < ph.n_train)).mean())
    return counts


def reachability(w: World) -> dict:
    """AUC of the true model on the test clicks, whole and with terms removed."""
    rows = np.flatnonzero((w.slots.window == 2) & (w.slots.photo >= 0))
    y = w.click[rows]
    terms = {k: v[rows] for k, v in w.terms.items()}
    full = total_logit(terms)
    reach = ("impression_noise",)
    out = {"oracle_auc": auc(y, w.p_click[rows]),
           "without": {k: auc(y, full - terms[k]) for k in terms},
           "reachable": {
               "without_impression_noise": auc(y, total_logit(terms, reach)),
               "without_noise_and_position": auc(y, total_logit(terms, reach + ("position",))),
               "without_noise_position_engagement": auc(y, total_logit(terms, reach + ("position", "session_engagement"))),
           }}
    base = total_logit(terms, reach)
    out["reachable_without"] = {k: auc(y, base - terms[k]) for k in terms if k != "impression_noise"}
    # the feed's echo: how often the sampled users were shown a test work depends on earlier clicks on it
    photo = w.slots.photo[rows]
    echo = np.log1p(np.bincount(photo)[photo])
    betas = np.round(np.arange(-1.0, 1.01, 0.1), 2)
    with_echo = [auc(y, base + b * echo) for b in betas]
    out["feed_echo"] = {"auc_of_work_test_impressions": auc(y, echo),
                        "reachable_plus_work_test_impressions": max(with_echo),
                        "best_weight": float(betas[int(np.argmax(with_echo))])}
    out["term_sd_on_test_rows"] = {k: float(np.std(v)) for k, v in terms.items()}
    return out


# ----------------------------------------------------------------------------- CLI


def check_arguments(a: argparse.Namespace) -> None:
    problems = []
    if not 50 <= a.users <= 50_000:
        problems.append(f"--users {a.users}: between 50 (a co-click feed and a global AUC need a crowd) and 50,000")
    if a.train_rows_per_user < 20:
        problems.append(f"--train-rows-per-user {a.train_rows_per_user}: at least 20")
    if a.test_rows_per_user < 5:
        problems.append(f"--test-rows-per-user {a.test_rows_per_user}: at least 5")
    if not 8 <= a.vector_dim <= 8192:
        problems.append(f"--vector-dim {a.vector_dim}: between 8 and 8192")
    if a.users * (a.train_rows_per_user + a.test_rows_per_user) > 20_000_000:
        problems.append("more than 20M rows would not fit the memory budget of this generator")
    if problems:
        raise SystemExit("feed_world: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--train-rows-per-user", type=int, default=300)
    ap.add_argument("--test-rows-per-user", type=int, default=75)
    ap.add_argument("--vector-dim", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    check_arguments(a)
    if a.out.exists() and (not a.out.is_dir() or any(a.out.iterdir())):
        print(f"feed_world: {a.out} is not empty; choose a new folder (nothing was written)", file=sys.stderr)
        return 2
    started = time.time()
    world = simulate(a.seed, a.users, a.train_rows_per_user, a.test_rows_per_user)
    simulated = time.time() - started
    counts = write_world(world, a.out, a.vector_dim, a.seed)
    figures = reachability(world)
    summary = {
        "world": "feed_world", "seed": a.seed, "users": a.users, "train_rows_per_user": a.train_rows_per_user,
        "test_rows_per_user": a.test_rows_per_user, "vector_dim": a.vector_dim,
        "story": asdict(world.story), "intercept": world.intercept, "counts": counts, "feed": world.feed_stats,
        **figures, "seconds": {"simulate": round(simulated, 1), "total": round(time.time() - started, 1)},
    }
    (a.out / "ground_truth").mkdir(parents=True, exist_ok=True)
    (a.out / "ground_truth" / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"feed_world: {a.out}: train {counts['train']['rows']} rows / {counts['train']['photos']} works, "
          f"test {counts['test']['rows']} rows / {counts['test']['photos']} works, oracle AUC "
          f"{figures['oracle_auc']:.4f} (no noise {figures['reachable']['without_impression_noise']:.4f}, plus feed echo "
          f"{figures['feed_echo']['reachable_plus_work_test_impressions']:.4f}), "
          f"{summary['seconds']['total']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
