"""An independent synthetic world in the released layout: quality measured on a story the platform never saw.

    python -m benchmarks.independent_world --out DIR [--users 500] [--train-rows-per-user 1000]
        [--test-rows-per-user 170] [--photos-per-user 95] [--vector-dim 2048] [--seed 1]

This generator was written apart from the project's own (it shares no code or parameters with
it) so that the platform can be scored on data whose generative story it was never shaped
around. It is a measuring stick: nothing here should be tuned to make the platform look good.

The story, and why a real short-video log has each part:

- Content lives in a continuous latent space (14 dims). Works are drawn from a heavy-tailed
  mixture (48 broad genres of uneven size, Student-t scatter around them), so there is some
  clustering but no clean topics: real catalogues have dense genres with long fuzzy tails.
- Every work has an uploader. Authors have a home genre, a personal style offset in the latent
  space, a production quality, a typical duration and a recognisable "look" (room, lighting,
  framing) that shows in the cover but says nothing about interest. Authors upload several
  works, a few authors upload many.
- The cover's 2048-d visual vector is a random two-layer network (tanh, then ReLU) of the
  work's latent position, its author's look plus the cover's own framing, and whether the cover
  shows faces or text, plus noise: non-negative and sparse like pooled CNN features. Content can
  be read from it only approximately, mixed with visual nuisance.
- Cover words: a 20k-word vocabulary with word embeddings in the same latent space and a Zipf
  frequency. About 45% of covers carry text (more in some regions of the space); a cover's words
  are drawn among the words near its position, plus frequent function words. Word ids are
  anonymised; id 0 is an ordinary (frequent) word inside longer lists, alone it means no text.
- Faces on about 35% of covers, more likely in some regions of the space; each face has a share
  of the cover, a gender, an age and an appearance score whose typical values depend on content.
- Users have one to four interest prototypes (directions in the latent space, near popular
  genres but personal) with weights; their taste for a work is a soft maximum over prototypes of
  the cosine with the work. A click's log-odds add: the user's own click propensity, their taste
  times a personal sensitivity, the work's quality, a preferred duration (and a liking or dislike
  of still pictures), for half the users a preference about faces (any face, gender, looks), the
  hour of day (evenings click more; each user has a personal rhythm), the screen (a larger batch
  splits attention; deep in a session users tire) and a mood per session. The probability is the
  logistic of that sum, with the intercept set for a train click rate of 0.20. Interests drift a
  little between train and test (prototypes turn by about 10 degrees, weights shift).
- Exposure comes from a recommender, not from chance: it holds a noisy estimate of each user's
  prototypes (sometimes missing one of them entirely) and fills three quarters of the feed with
  works tilted toward that estimate and toward popular works (popularity is heavy-tailed and
  correlated with quality); the other quarter pushes fresh uploads to random users, so most
  works are seen a few times and a few hits very many times. A user never sees a work twice.
  This is the selection bias a real log has: what was shown already says something about taste.
- The impression timeline never looks at clicks: each user has an activity level (rows per
  user are heavy-tailed), a daily rhythm (sessions start at hours drawn from a global evening-
  heavy profile times a personal phase), sessions of a few to many screens, screens of 1-6 works
  shown at the exact same millisecond, seconds between screens and hours between sessions.
- Train is 36 hours from a Beijing midnight in 1994 (timestamps in ms, about 760_032_000_000);
  test is the following 12 hours (afternoon and evening). Test works are new uploads from the
  same content distribution, some by authors seen in train, most by new authors; their ids are
  all higher than the train ids. Every user is in both periods.
- Likes and follows are rare and only follow a click (liked when the taste is strong, followed
  when the author is good); playing time is a share of the duration (sometimes with replays, and
  rare huge outliers from an app left open), 0 without a click.

The oracle, the true click probability, reaches an AUC near 0.80 on the test rows: the
remaining noise is the coin flip itself, as in a real log.

Output under DIR:

    train/train_interaction.txt   user_id photo_id click like follow time playing_time duration_time
    train/train_face.txt          photo_id [[share, gender, age, appearance], ...] (works with a face)
    train/train_text.txt          photo_id comma-separated word ids, or 0 (every work)
    train/final_visual_train.zip  final_visual_train/<photo_id>: .npy of shape [1, D] float32 (stored)
    test/...                      the same for test (test_interaction.txt: user_id photo_id time duration_time)
    ground_truth/test_ground_truth.txt  user_id photo_id click p_click, one line per test row
    ground_truth/train_p_click.txt  user_id photo_id time p_click, one line per train row, in its order
    ground_truth/summary.json     seed, sizes, train click rate, oracle AUC (also without the session's
                                  mood, and without the photo's own quality: what no learner can see)

All text files are tab-separated without a header. An --out that exists and is not empty is
refused (exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENERATOR = "benchmarks.independent_world"

LATENT = 14  # dimensions of the content space
GENRES = 48  # mixture components of the content space
LOOK = 8  # dimensions of a cover's visual nuisance (author's look + framing)
VOCAB = 20_000
FUNCTION_WORDS = 150  # the most frequent words, without topical meaning
WORD_POOL = 400  # topical candidate words per genre
HIDDEN = 256  # width of the random visual network

HOUR_MS = 3_600_000
TRAIN_START_MS = 760_032_000_000  # 1994-01-31 00:00 in Beijing (UTC+8)
TRAIN_HOURS, TEST_HOURS = 36, 12

CLICK_RATE = 0.20
LIKE_GIVEN_CLICK = 0.0143  # 0.0029 / 0.2023 in the real log
FOLLOW_GIVEN_CLICK = 0.0048  # 0.00098 / 0.2023
FACE_SHARE, TEXT_SHARE = 0.35, 0.45
MAX_PLAYING_TIME = 1_912_441
TASTE_SHARPNESS = 5.0  # gamma of the soft maximum over prototypes
VECTOR_CHUNK = 4096
EXPLORE = 0.25  # share of the recommender's traffic that pushes fresh uploads to random users


# -- small numerical helpers --------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def solve_intercept(logit: np.ndarray, target: float) -> float:
    """b such that mean(sigmoid(logit + b)) == target (bisection; the mean is monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sigmoid(logit + mid).mean() < target else (lo, mid)
    return (lo + hi) / 2


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank formula (Mann-Whitney), ties given their average rank."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    first = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    last = np.r_[first[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((first + last + 1) / 2.0, last - first)
    pos = label.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def soft_taste(protos: np.ndarray, log_w: np.ndarray, user: np.ndarray, zhat: np.ndarray) -> np.ndarray:
    """Soft maximum over a user's prototypes of cos(prototype, work): (1/g) log sum_k w_k exp(g cos_k).

    protos (users, K, L) and log_w (users, K) (missing prototypes: log_w = -inf); per row the
    user index and the work's unit position zhat (rows, L)."""
    acc = np.full(len(zhat), -np.inf)
    for k in range(protos.shape[1]):
        cos = np.einsum("nl,nl->n", protos[user, k], zhat)
        acc = np.logaddexp(acc, TASTE_SHARPNESS * cos + log_w[user, k])
    return acc / TASTE_SHARPNESS


def increasing_ids(rng: np.random.Generator, n: int, start: int, mean_gap: float) -> np.ndarray:
    """n distinct increasing anonymised-looking ids from `start` on."""
    return start + np.cumsum(1 + rng.geometric(1.0 / mean_gap, size=n)).astype(np.int64)


def subset(obj, idx: np.ndarray):
    """The same dataclass with every per-item array field restricted to `idx`."""
    n = len(getattr(obj, "ids"))
    changes = {
        f.name: getattr(obj, f.name)[idx]
        for f in dataclasses.fields(obj)
        if isinstance(getattr(obj, f.name), np.ndarray) and len(getattr(obj, f.name)) == n
    }
    return dataclasses.replace(obj, **changes)


# -- the content space, words and authors -------------------------------------------------------


@dataclass
class Content:
    centers: np.ndarray  # (GENRES, LATENT) genre centres
    weights: np.ndarray  # (GENRES,) genre sizes
    face_bias: np.ndarray  # (GENRES,) how often covers of a genre show faces
    text_bias: np.ndarray  # (GENRES,)
    directions: dict  # named unit directions of the space (face, text, duration, still, gender, age, looks)
    word_emb: np.ndarray  # (VOCAB, LATENT) unit word embeddings
    word_log_prior: np.ndarray  # (VOCAB,) Zipf log-frequency
    word_ids: np.ndarray  # (VOCAB,) anonymised ids
    pools: np.ndarray  # (GENRES, WORD_POOL) topical words nearest each genre
    function_words: np.ndarray  # (FUNCTION_WORDS,) word indices


def make_content(rng: np.random.Generator) -> Content:
    centers = rng.normal(0.0, 1.3, (GENRES, LATENT))
    weights = np.sort(rng.dirichlet(np.full(GENRES, 0.8)))[::-1]
    names = ("face", "text", "duration", "still", "gender", "age", "looks")
    directions = {name: unit(rng.normal(size=LATENT)) for name in names}
    # words: each is "about" a genre, near its direction; the most frequent ones are function words
    rank = rng.permutation(VOCAB) + 1
    word_log_prior = -0.8 * np.log(rank)
    about = rng.choice(GENRES, size=VOCAB, p=weights**0.5 / (weights**0.5).sum())
    word_emb = unit(unit(centers)[about] + 0.7 * rng.normal(size=(VOCAB, LATENT)) / np.sqrt(LATENT))
    function_words = np.argsort(rank)[:FUNCTION_WORDS]
    topical = np.setdiff1d(np.arange(VOCAB), function_words)
    closeness = unit(centers) @ word_emb[topical].T  # (GENRES, topical)
    pools = topical[np.argsort(-closeness, axis=1)[:, :WORD_POOL]]
    word_ids = rng.permutation(increasing_ids(rng, VOCAB, 0, 11.0))
    word_ids[function_words[37]] = 0  # `0` is also an ordinary, frequent word inside longer lists
    return Content(
        centers=centers,
        weights=weights,
        face_bias=rng.normal(0.0, 1.0, GENRES),
        text_bias=rng.normal(0.0, 0.8, GENRES),
        directions=directions,
        word_emb=word_emb.astype(np.float32),
        word_log_prior=word_log_prior,
        word_ids=word_ids,
        pools=pools,
        function_words=function_words,
    )


@dataclass
class Authors:
    ids: np.ndarray  # index only
    home: np.ndarray  # home genre
    style: np.ndarray  # (n, LATENT) offset of all their works
    quality: np.ndarray
    duration: np.ndarray  # offset of log duration
    look: np.ndarray  # (n, LOOK) visual signature
    activity: np.ndarray  # upload weight (heavy-tailed)


def make_authors(rng: np.random.Generator, content: Content, n: int) -> Authors:
    return Authors(
        ids=np.arange(n),
        home=rng.choice(GENRES, size=n, p=content.weights),
        style=rng.normal(0.0, 0.55, (n, LATENT)),
        quality=rng.normal(0.0, 0.35, n),
        duration=rng.normal(0.0, 0.35, n),
        look=rng.normal(0.0, 1.0, (n, LOOK)),
        activity=rng.lognormal(0.0, 1.0, n),
    )


# -- works ---------------------------------------------------------------------------------------


@dataclass
class Photos:
    ids: np.ndarray  # anonymised photo_id (set once the shown works are known)
    author: np.ndarray
    z: np.ndarray  # (n, LATENT) float32
    zhat: np.ndarray  # unit z
    genre: np.ndarray  # the genre nearest z (for words, faces and text)
    quality: np.ndarray
    log_pop: np.ndarray
    duration: np.ndarray  # seconds, 0 = still picture
    look: np.ndarray  # (n, LOOK)
    # cover features, drawn for the works that are shown
    has_face: np.ndarray | None = None
    male_share: np.ndarray | None = None
    looks: np.ndarray | None = None  # mean appearance score of the faces
    face_rows: np.ndarray | None = None  # JSON face list per work ("" when none)
    text_rows: np.ndarray | None = None  # cover words per work ("0" when none)
    has_text: np.ndarray | None = None


def make_photos(rng: np.random.Generator, content: Content, authors: Authors, author: np.ndarray) -> Photos:
    n = len(author)
    genre = np.where(rng.random(n) < 0.75, authors.home[author], rng.choice(GENRES, size=n, p=content.weights))
    scatter = rng.standard_t(3.0, (n, LATENT)) * 0.55
    z = (content.centers[genre] + authors.style[author] + scatter).astype(np.float32)
    zhat = unit(z)
    quality = authors.quality[author] + rng.normal(0.0, 0.45, n)
    log_pop = 0.9 * quality + rng.normal(0.0, 1.8, n)
    mu = np.log(11.0) + 0.9 * (zhat @ content.directions["duration"]) + authors.duration[author]
    duration = np.clip(np.rint(np.exp(rng.normal(mu, 0.7))), 1, 600).astype(np.int64)
    still = rng.random(n) < sigmoid(-3.3 + 1.5 * (zhat @ content.directions["still"]))
    duration[still] = 0
    look = 0.75 * authors.look[author] + 0.65 * rng.normal(0.0, 1.0, (n, LOOK))
    return Photos(
        ids=np.arange(n, dtype=np.int64),
        author=author,
        z=z,
        zhat=zhat.astype(np.float32),
        genre=np.argmax(zhat @ unit(content.centers).T, axis=1),
        quality=quality,
        log_pop=log_pop,
        duration=duration,
        look=look.astype(np.float32),
    )


def make_catalogue(rng: np.random.Generator, content: Content, n_train: int, n_test: int):
    """Authors, the works uploaded before the train period ends, and the new uploads shown in test."""
    n_old, n_new = max(1, n_train // 5), max(1, n_test // 6)
    authors = make_authors(rng, content, n_old + n_new)
    old_p = authors.activity[:n_old] / authors.activity[:n_old].sum()
    new_p = authors.activity[n_old:] / authors.activity[n_old:].sum()
    train_author = rng.choice(n_old, size=n_train, p=old_p)
    from_old = rng.random(n_test) < 0.4
    test_author = np.where(
        from_old, rng.choice(n_old, size=n_test, p=old_p), n_old + rng.choice(n_new, size=n_test, p=new_p)
    )
    return authors, make_photos(rng, content, authors, train_author), make_photos(rng, content, authors, test_author)


def draw_faces(rng: np.random.Generator, content: Content, photos: Photos) -> None:
    """Faces on FACE_SHARE of the covers (by genre and position), 1.25 per cover on average, up to 20;
    share, gender, age and looks typical of the content. Sets the face rows and per-work summaries."""
    n = len(photos.ids)
    d = content.directions
    logit = content.face_bias[photos.genre] + 2.5 * (photos.zhat @ d["face"])
    has_face = rng.random(n) < sigmoid(logit + solve_intercept(logit, FACE_SHARE))
    count = np.where(has_face, np.minimum(rng.geometric(0.8, n), 20), 0)
    crowd = has_face & (rng.random(n) < 0.004)  # group shots
    count[crowd] = np.minimum(3 + rng.geometric(0.15, crowd.sum()), 20)
    owner = np.repeat(np.arange(n), count)
    p_male = sigmoid(4.0 * (photos.zhat @ d["gender"]) + rng.normal(0.0, 0.8, n))
    age_mu = 24 + 6 * np.tanh(3 * (photos.zhat @ d["age"])) + rng.normal(0.0, 3.0, n)
    looks_mu = 55 + 12 * np.tanh(3 * (photos.zhat @ d["looks"])) + rng.normal(0.0, 6.0, n)
    m = len(owner)
    share = np.clip(rng.beta(1.6, 5.0, m) * 1.3 / np.sqrt(count[owner]), 0.01, 1.0)
    gender = (rng.random(m) < p_male[owner]).astype(np.int64)
    age = np.clip(np.rint(rng.normal(age_mu[owner], 4.5)), 1, 80).astype(np.int64)
    looks = np.clip(np.rint(rng.normal(looks_mu[owner], 10.0)), 0, 99).astype(np.int64)
    faces = [f"[{s:.2f}, {g}, {a}, {b}]" for s, g, a, b in zip(share, gender, age, looks)]
    rows = np.full(n, "", dtype=object)
    starts = np.r_[0, np.cumsum(count)]
    for i in np.flatnonzero(has_face):
        rows[i] = "[" + ", ".join(faces[starts[i] : starts[i + 1]]) + "]"
    with np.errstate(invalid="ignore"):
        photos.male_share = np.nan_to_num(np.bincount(owner, gender, n) / count)
        photos.looks = np.where(has_face, np.bincount(owner, looks, n) / np.maximum(count, 1), 55.0)
    photos.has_face, photos.face_rows = has_face, rows


def draw_words(rng: np.random.Generator, content: Content, photos: Photos) -> None:
    """Cover words near the work's position: Gumbel top-k among its genre's topical words and function words."""
    n = len(photos.ids)
    logit = content.text_bias[photos.genre] + 2.0 * (photos.zhat @ content.directions["text"])
    has_text = rng.random(n) < sigmoid(logit + solve_intercept(logit, TEXT_SHARE))
    n_words = np.minimum(1 + rng.poisson(2.3, n), 14)
    rows = np.full(n, "0", dtype=object)
    fw = content.function_words
    for g in np.unique(photos.genre[has_text]):
        members = np.flatnonzero(has_text & (photos.genre == g))
        pool = np.r_[content.pools[g], fw]
        topical = 6.0 * (photos.zhat[members] @ content.word_emb[content.pools[g]].T)
        general = np.broadcast_to(np.full(len(fw), 1.2), (len(members), len(fw)))
        score = np.hstack([topical, general]) + content.word_log_prior[pool]
        score += rng.gumbel(size=score.shape)
        ranked = pool[np.argsort(-score, axis=1)[:, : n_words.max()]]
        for row, i in enumerate(members):
            ids = content.word_ids[ranked[row, : n_words[i]]]
            if len(ids) == 1 and ids[0] == 0:  # a lone 0 would read as "no text"
                ids = content.word_ids[ranked[row, 1:2]]
            rows[i] = ",".join(map(str, ids))
    photos.has_text, photos.text_rows = has_text, rows


# -- users ---------------------------------------------------------------------------------------

MAX_PROTOS = 4


@dataclass
class Users:
    ids: np.ndarray
    bias: np.ndarray  # own click propensity
    sensitivity: np.ndarray  # how much taste matters
    protos: np.ndarray  # (n, MAX_PROTOS, LATENT) unit, train period
    log_w: np.ndarray  # (n, MAX_PROTOS), -inf for missing prototypes
    protos_test: np.ndarray  # drifted
    log_w_test: np.ndarray
    rec_protos: np.ndarray  # the recommender's noisy estimate
    rec_log_w: np.ndarray
    focus: np.ndarray  # how hard the recommender tilts this user's feed
    dur_centre: np.ndarray  # preferred log(1 + duration)
    dur_strength: np.ndarray
    still_pref: np.ndarray
    face_pref: np.ndarray
    gender_pref: np.ndarray
    looks_pref: np.ndarray
    phase: np.ndarray  # hour of the personal activity peak
    rhythm: np.ndarray  # personal amplitude of the hour effect on clicks
    batch_mean: np.ndarray
    session_mean: np.ndarray  # screens per session
    activity: np.ndarray
    like_bias: np.ndarray
    follow_bias: np.ndarray


def make_users(rng: np.random.Generator, content: Content, n: int) -> Users:
    n_protos = rng.choice([1, 2, 3, 4], size=n, p=[0.3, 0.35, 0.23, 0.12])
    present = np.arange(MAX_PROTOS)[None, :] < n_protos[:, None]
    genre_p = content.weights**0.6 / (content.weights**0.6).sum()
    genre = rng.choice(GENRES, size=(n, MAX_PROTOS), p=genre_p)
    noise = lambda scale: scale * rng.normal(size=(n, MAX_PROTOS, LATENT)) / np.sqrt(LATENT)  # noqa: E731
    protos = unit(unit(content.centers)[genre] + noise(0.6))
    weights = rng.gamma(2.0, 1.0, (n, MAX_PROTOS))
    log_w = np.where(present, np.log(weights / np.where(present, weights, 0).sum(1, keepdims=True)), -np.inf)
    # the recommender's estimate: turned prototypes, wrong weights, sometimes a whole interest missed
    missed = present & (rng.random((n, MAX_PROTOS)) < 0.2) & (n_protos[:, None] > 1)
    missed[np.arange(n), rng.integers(0, n_protos)] = False  # it always knows one of them
    rec_log_w = np.where(present & ~missed, log_w + rng.normal(0.0, 0.4, (n, MAX_PROTOS)), -np.inf)
    face_fan = rng.random(n) < 0.5
    return Users(
        ids=np.arange(n),
        bias=rng.normal(0.0, 0.55, n),
        sensitivity=2.9 * rng.lognormal(0.0, 0.35, n),
        protos=protos.astype(np.float32),
        log_w=log_w,
        protos_test=unit(protos + noise(0.18)).astype(np.float32),
        log_w_test=np.where(present, log_w + rng.normal(0.0, 0.15, (n, MAX_PROTOS)), -np.inf),
        rec_protos=unit(protos + noise(0.5)).astype(np.float32),
        rec_log_w=rec_log_w,
        focus=rng.uniform(2.0, 5.0, n),
        dur_centre=rng.normal(np.log(14.0), 0.5, n),
        dur_strength=rng.gamma(2.0, 0.1, n),
        still_pref=rng.normal(-0.1, 0.4, n),
        face_pref=np.where(face_fan, rng.normal(0.2, 0.5, n), 0.0),
        gender_pref=np.where(face_fan, rng.normal(0.0, 0.5, n), 0.0),
        looks_pref=np.where(face_fan, rng.normal(0.1, 0.2, n), 0.0),
        phase=rng.normal(21.0, 3.0, n),
        rhythm=np.abs(rng.normal(0.0, 0.15, n)),
        batch_mean=rng.uniform(1.3, 4.0, n),
        session_mean=rng.lognormal(np.log(8.0), 0.5, n),
        activity=rng.lognormal(0.0, 0.8, n),
        like_bias=rng.normal(0.0, 1.0, n),
        follow_bias=rng.normal(0.0, 1.0, n),
    )


def rows_per_user(rng: np.random.Generator, users: Users, per_user: float, pool: int, floor: int) -> np.ndarray:
    """Heavy-tailed rows per user around `per_user`, never more than 30% of the period's works."""
    share = users.activity * rng.lognormal(0.0, 0.25, len(users.ids))
    n = np.rint(per_user * share / share.mean())
    return np.clip(n, max(floor, 0.1 * per_user), min(10 * per_user, 0.3 * pool)).astype(np.int64)


# -- exposure: what the recommender shows -----------------------------------------------------


def expose(rng: np.random.Generator, users: Users, photos: Photos, n_rows: np.ndarray) -> list[np.ndarray]:
    """For each user, n_rows[u] distinct works sampled without replacement from a mixture: with
    weight 1 - EXPLORE the feed, proportional to pop * exp(focus * the recommender's estimate of the
    user's taste); with weight EXPLORE uniform (fresh uploads pushed to random users).

    Sampling without replacement is the exponential race (Gumbel top-k): the works with the
    largest weight / Exp(1) win, which never shows a user the same work twice."""
    n_photos = len(photos.ids)
    block = max(1, 4_000_000 // n_photos)
    zt = photos.zhat.T
    pop = np.exp(photos.log_pop - photos.log_pop.max()).astype(np.float32)
    rec_w = np.exp(users.rec_log_w).astype(np.float32)  # 0 for an interest the recommender missed
    shown = []
    for first in range(0, len(users.ids), block):
        u = np.arange(first, min(first + block, len(users.ids)))
        taste = np.zeros((len(u), n_photos), dtype=np.float32)  # sum_k w_k exp(g cos_k)
        for k in range(MAX_PROTOS):
            if rec_w[u, k].any():
                taste += rec_w[u, k, None] * np.exp(TASTE_SHARPNESS * (users.rec_protos[u, k] @ zt))
        # exp(focus * soft taste) = taste ** (focus / g)
        feed = np.exp(np.log(taste) * (users.focus[u, None] / TASTE_SHARPNESS).astype(np.float32)) * pop
        feed *= ((1 - EXPLORE) / feed.sum(axis=1, keepdims=True)).astype(np.float32)
        feed += np.float32(EXPLORE / n_photos)
        race = rng.standard_exponential((len(u), n_photos), dtype=np.float32)
        feed /= np.maximum(race, 1e-30, out=race)
        top = int(n_rows[u].max())
        best = np.argpartition(-feed, top - 1, axis=1)[:, :top]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(feed, best, 1), axis=1), 1)
        shown += [best[i, : n_rows[uu]] for i, uu in enumerate(u)]
    return shown


def keep_shown(photos: Photos, shown: list[np.ndarray]) -> tuple[Photos, list[np.ndarray]]:
    """The works somebody saw, and each user's list re-indexed into them."""
    kept = np.unique(np.concatenate(shown))
    return subset(photos, kept), [np.searchsorted(kept, s) for s in shown]


# -- the impression timeline (independent of clicks) -------------------------------------------


def hour_of_day(t_ms: np.ndarray) -> np.ndarray:
    return ((t_ms - TRAIN_START_MS) / HOUR_MS) % 24.0


def activity_profile(hour: np.ndarray, phase: float) -> np.ndarray:
    """Relative rate of starting a session: evening-heavy, a lunch bump, quiet nights, a personal peak."""
    base = 1.0 + 0.6 * np.cos(2 * np.pi * (hour - 20.5) / 24) + 0.25 * np.cos(2 * np.pi * (hour - 12.5) / 12)
    return base * (1.0 + 0.4 * np.cos(2 * np.pi * (hour - phase) / 24))


def session_starts(rng: np.random.Generator, n: int, phase: float, start_ms: int, span_ms: int) -> np.ndarray:
    """n sorted session start offsets (ms), drawn from the user's hourly profile by rejection."""
    out = np.empty(0)
    while len(out) < n:
        cand = rng.uniform(0, span_ms, 4 * n + 16)
        keep = rng.random(len(cand)) * 2.6 < activity_profile(hour_of_day(start_ms + cand), phase)
        out = np.r_[out, cand[keep]]
    return np.sort(out[:n])


@dataclass
class Rows:
    user: np.ndarray
    photo: np.ndarray
    time: np.ndarray  # ms
    batch_size: np.ndarray
    depth: np.ndarray  # screens before this one in the session
    mood: np.ndarray  # the session's mood (part of the true click probability)


def user_timeline(rng: np.random.Generator, n: int, users: Users, u: int, start_ms: int, span_ms: int):
    """Times, batch size and session depth of a user's n impressions, and the session of each screen."""
    sizes = np.clip(1 + rng.poisson(users.batch_mean[u] - 1, n), 1, 6)  # n screens always suffice
    cum = np.cumsum(sizes)
    n_screens = int(np.searchsorted(cum, n) + 1)
    sizes = sizes[:n_screens]
    sizes[-1] -= cum[n_screens - 1] - n
    new_session = rng.random(n_screens) < 1.0 / users.session_mean[u]
    new_session[0] = True
    session = np.cumsum(new_session) - 1
    n_sessions = int(session[-1]) + 1
    gaps = np.where(new_session, 0.0, 800 + rng.lognormal(np.log(9000.0), 0.9, n_screens))
    run = np.cumsum(gaps)
    first = np.flatnonzero(new_session)
    within = run - run[first][session]
    length = np.r_[within[first[1:] - 1], within[-1]]  # each session's span
    # sessions must not overlap: shift later ones as needed (a running maximum), at least a minute apart
    starts = session_starts(rng, n_sessions, users.phase[u], start_ms, span_ms)
    before = np.r_[0.0, np.cumsum(length + 60_000)[:-1]]
    starts = np.maximum.accumulate(starts - before) + before
    end = starts[-1] + length[-1]
    if end > span_ms - 1000:  # squeeze into the period
        starts = starts * (span_ms - 1000 - length[-1]) / starts[-1] if starts[-1] > 0 else starts
    screen_time = start_ms + np.floor(starts[session] + within).astype(np.int64)
    depth = np.arange(n_screens) - first[session]
    return np.repeat(screen_time, sizes), np.repeat(sizes, sizes), np.repeat(depth, sizes), np.repeat(session, sizes)


def timeline(rng: np.random.Generator, users: Users, shown: list[np.ndarray], start_ms: int, hours: int) -> Rows:
    parts = []
    for u, photos in enumerate(shown):
        t, size, depth, session = user_timeline(rng, len(photos), users, u, start_ms, hours * HOUR_MS)
        mood = rng.normal(0.0, 0.3, session[-1] + 1)[session]
        parts.append((np.full(len(photos), u), rng.permutation(photos), t, size, depth, mood))
    return Rows(*(np.concatenate(col) for col in zip(*parts)))


# -- clicks, likes, follows, playing time -----------------------------------------------------


def click_logit(users: Users, photos: Photos, rows: Rows, test: bool) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds of a click without the intercept, and the taste term (for likes and playing time)."""
    u, p = rows.user, rows.photo
    protos, log_w = (users.protos_test, users.log_w_test) if test else (users.protos, users.log_w)
    taste = users.sensitivity[u] * soft_taste(protos, log_w, u, photos.zhat[p])
    d = photos.duration[p]
    duration = np.where(
        d == 0, users.still_pref[u], -users.dur_strength[u] * (np.log1p(d) - users.dur_centre[u]) ** 2
    )
    face = photos.has_face[p] * (
        users.face_pref[u]
        + users.gender_pref[u] * (2 * photos.male_share[p] - 1)
        + users.looks_pref[u] * (photos.looks[p] - 60.0) / 15.0
    )
    hour = hour_of_day(rows.time)
    clock = 0.2 * np.cos(2 * np.pi * (hour - 22.0) / 24)
    clock += users.rhythm[u] * np.cos(2 * np.pi * (hour - users.phase[u]) / 24)
    screen = -0.35 * np.log(rows.batch_size) - 0.08 * np.log1p(rows.depth)
    logit = users.bias[u] + taste + photos.quality[p] + duration + face + clock + screen + rows.mood
    return logit, taste


def engagement(rng: np.random.Generator, users: Users, photos: Photos, authors: Authors, rows: Rows, click, taste):
    """Likes and follows (only after a click) and seconds played (0 without a click)."""
    u, p = rows.user, rows.photo
    c = click.astype(bool)
    rel = taste - taste[c].mean()
    like_logit = 1.2 * rel + 0.5 * photos.quality[p] + users.like_bias[u]
    like = c & (rng.random(len(c)) < sigmoid(like_logit + solve_intercept(like_logit[c], LIKE_GIVEN_CLICK)))
    follow_logit = 1.0 * rel + 1.5 * authors.quality[photos.author[p]] + users.follow_bias[u]
    follow = c & (rng.random(len(c)) < sigmoid(follow_logit + solve_intercept(follow_logit[c], FOLLOW_GIVEN_CLICK)))
    d = photos.duration[p].astype(float)
    watched = sigmoid(rng.normal(0.3 + 0.8 * rel, 1.2))
    replays = np.where(rng.random(len(c)) < 0.15, rng.geometric(0.5, len(c)), 0)
    seconds = np.where(d > 0, d * (watched + replays), rng.lognormal(np.log(4.0), 0.8, len(c)))
    left_open = rng.random(len(c)) < 1.5e-4
    seconds = np.where(left_open, np.minimum(rng.lognormal(np.log(3000.0), 1.8, len(c)), MAX_PLAYING_TIME), seconds)
    playing = np.where(c, np.rint(seconds), 0).astype(np.int64)
    return like.astype(np.int64), follow.astype(np.int64), playing


# -- visual vectors ------------------------------------------------------------------------------


@dataclass
class VisualMap:
    """A random two-layer network from (content, look, face, text) to a non-negative sparse vector."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    scale: np.ndarray
    noise: float = 0.6

    @classmethod
    def make(cls, rng: np.random.Generator, dim: int) -> "VisualMap":
        n_in = LATENT + LOOK + 2
        w1 = rng.normal(0.0, 2.5 / np.sqrt(n_in), (n_in, HIDDEN))
        w1[LATENT : LATENT + LOOK] *= 1.6  # the framing weighs more in the picture than the content
        return cls(
            w1=w1.astype(np.float32),
            b1=rng.normal(0.0, 0.3, HIDDEN).astype(np.float32),
            w2=rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), (HIDDEN, dim)).astype(np.float32),
            b2=(-0.35 + rng.normal(0.0, 0.2, dim)).astype(np.float32),
            scale=rng.lognormal(-0.5, 0.5, dim).astype(np.float32),
        )

    def __call__(self, rng: np.random.Generator, photos: Photos, idx: np.ndarray) -> np.ndarray:
        x = np.hstack(
            [photos.z[idx] / 1.7, photos.look[idx], photos.has_face[idx, None], photos.has_text[idx, None]]
        ).astype(np.float32)
        out = np.tanh(x @ self.w1 + self.b1) @ self.w2
        out += self.b2
        out += self.noise * rng.standard_normal(out.shape, dtype=np.float32)
        np.maximum(out, 0.0, out=out)
        out *= self.scale
        return out


def npy_header(dim: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, dim), dtype=np.float32))
    return buf.getvalue()[: -4 * dim]


def write_visual_zip(path: Path, prefix: str, photos: Photos, visual: VisualMap, rng: np.random.Generator) -> None:
    """One stored .npy [1, D] float32 per work, generated and written chunk by chunk."""
    header = npy_header(visual.w2.shape[1])
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for first in range(0, len(photos.ids), VECTOR_CHUNK):
            idx = np.arange(first, min(first + VECTOR_CHUNK, len(photos.ids)))
            vectors = visual(rng, photos, idx)
            for pid, row in zip(photos.ids[idx], vectors):
                zf.writestr(f"{prefix}/{pid}", header + row.tobytes())


# -- writing -------------------------------------------------------------------------------------


def write_table(path: Path, columns: list, chunk: int = 500_000) -> None:
    """Tab-separated, no header; integer arrays or arrays of strings."""
    n = len(columns[0])
    with open(path, "w") as f:
        for s in range(0, n, chunk):
            cols = [np.asarray(c[s : s + chunk]).astype(str) for c in columns]
            f.write("".join(line + "\n" for line in map("\t".join, zip(*cols))))


def write_covers(folder: Path, split: str, photos: Photos) -> None:
    order = np.argsort(photos.ids)
    with_face = order[photos.has_face[order]]
    write_table(folder / f"{split}_face.txt", [photos.ids[with_face], photos.face_rows[with_face]])
    write_table(folder / f"{split}_text.txt", [photos.ids[order], photos.text_rows[order]])


def assign_ids(rng: np.random.Generator, users: Users, train: Photos, test: Photos) -> None:
    """Anonymised ids: random order, gaps between them; every test photo id above every train one."""
    users.ids = rng.permutation(increasing_ids(rng, len(users.ids), int(rng.integers(100, 1000)), 9.0))
    train.ids = rng.permutation(increasing_ids(rng, len(train.ids), int(rng.integers(10_000, 90_000)), 40.0))
    test.ids = rng.permutation(increasing_ids(rng, len(test.ids), int(train.ids.max()) + 1000, 6.0))


def sort_rows(users: Users, rows: Rows) -> Rows:
    order = np.lexsort((rows.time, users.ids[rows.user]))
    return Rows(*(getattr(rows, f.name)[order] for f in dataclasses.fields(Rows)))


# -- the whole world -----------------------------------------------------------------------------


def generate(
    out: Path, n_users: int, train_rows: int, test_rows: int, photos_per_user: int, dim: int, seed: int
) -> dict:
    """Write the whole dataset under `out` and return the summary."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    world, people, recommender, clock, coins, covers, pixels, naming = streams

    content = make_content(world)
    n_pool = n_users * photos_per_user
    n_test_pool = max(50, round(n_pool * test_rows / (train_rows + test_rows)))
    authors, train_pool, test_pool = make_catalogue(world, content, n_pool - n_test_pool, n_test_pool)
    users = make_users(people, content, n_users)
    n_train = rows_per_user(people, users, train_rows, len(train_pool.ids), floor=20)
    n_test = rows_per_user(people, users, test_rows, len(test_pool.ids), floor=3)

    train, train_shown = keep_shown(train_pool, expose(recommender, users, train_pool, n_train))
    test, test_shown = keep_shown(test_pool, expose(recommender, users, test_pool, n_test))
    del train_pool, test_pool
    for photos in (train, test):
        draw_faces(covers, content, photos)
        draw_words(covers, content, photos)
    train_log = timeline(clock, users, train_shown, TRAIN_START_MS, TRAIN_HOURS)
    test_log = timeline(clock, users, test_shown, TRAIN_START_MS + TRAIN_HOURS * HOUR_MS, TEST_HOURS)
    assign_ids(naming, users, train, test)
    train_log, test_log = sort_rows(users, train_log), sort_rows(users, test_log)

    logit, taste = click_logit(users, train, train_log, test=False)
    intercept = solve_intercept(logit, CLICK_RATE)
    click = (coins.random(len(logit)) < sigmoid(logit + intercept)).astype(np.int64)
    like, follow, playing = engagement(coins, users, train, authors, train_log, click, taste)
    test_logit, _ = click_logit(users, test, test_log, test=True)
    p_test = sigmoid(test_logit + intercept)
    test_click = (coins.random(len(p_test)) < p_test).astype(np.int64)

    for split in ("train", "test", "ground_truth"):
        (out / split).mkdir(parents=True, exist_ok=True)
    r = train_log
    write_table(
        out / "train" / "train_interaction.txt",
        [users.ids[r.user], train.ids[r.photo], click, like, follow, r.time, playing, train.duration[r.photo]],
    )
    # every train row's true probability, line for line with the train file (to read a validation's rows)
    write_table(
        out / "ground_truth" / "train_p_click.txt",
        [users.ids[r.user], train.ids[r.photo], r.time, np.char.mod("%.6f", sigmoid(logit + intercept))],
    )
    r = test_log
    write_table(
        out / "test" / "test_interaction.txt", [users.ids[r.user], test.ids[r.photo], r.time, test.duration[r.photo]]
    )
    write_table(
        out / "ground_truth" / "test_ground_truth.txt",
        [users.ids[r.user], test.ids[r.photo], test_click, np.char.mod("%.6f", p_test)],
    )
    write_covers(out / "train", "train", train)
    write_covers(out / "test", "test", test)
    visual = VisualMap.make(pixels, dim)
    write_visual_zip(out / "train" / "final_visual_train.zip", "final_visual_train", train, visual, pixels)
    write_visual_zip(out / "test" / "final_visual_test.zip", "final_visual_test", test, visual, pixels)

    summary = {
        "generator": GENERATOR,
        "seed": seed,
        "users": n_users,
        "train_rows": int(len(click)),
        "test_rows": int(len(test_click)),
        "train_photos": int(len(train.ids)),
        "test_photos": int(len(test.ids)),
        "click_rate_train": round(float(click.mean()), 6),
        "oracle_auc": round(auc(p_test, test_click), 6),
        # what no learner can know about a test row: its session's mood, and the part of the
        # photo's quality that is its own (not its author's); the oracle without them
        "oracle_auc_without_session_mood": round(auc(test_logit - test_log.mood, test_click), 6),
        "oracle_auc_without_mood_and_own_quality": round(
            auc(test_logit - test_log.mood - (test.quality - authors.quality[test.author])[test_log.photo], test_click), 6
        ),
    }
    (out / "ground_truth" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {GENERATOR}", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create (absent or empty)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--train-rows-per-user", type=int, default=1000)
    parser.add_argument("--test-rows-per-user", type=int, default=170)
    parser.add_argument("--photos-per-user", type=int, default=95)
    parser.add_argument("--vector-dim", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"refusing to write into {out}: it exists and is not an empty folder", file=sys.stderr)
        return 2
    started = time.perf_counter()
    summary = generate(
        out,
        args.users,
        args.train_rows_per_user,
        args.test_rows_per_user,
        args.photos_per_user,
        args.vector_dim,
        args.seed,
    )
    print(json.dumps(summary))
    print(f"written to {out} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
