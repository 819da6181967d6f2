"""The latent world behind the synthetic data: topics, photos, users.

The story mirrors the real challenge so that content is the only bridge between the disjoint
train and test photos:
- Latent content topics (with subtopics) drive each photo's visual vector, its faces, its cover
  words and its duration. A latent "quality" shows in the visual vector and in face appearance.
- Users have sparse interests over topics, tastes over subtopics, their own base click rate, and
  preferences for faces, gender, text and duration.
- Photos are published over time, have heavy-tailed popularity and a decaying exposure.
Nothing here is observable directly; `impressions.py` turns it into the released files.

A `World` names which mechanisms of a real short-video log are switched on (`WORLDS`, chosen with
`--world`). `demo` is the original story and draws exactly the same numbers as before worlds
existed; every other mechanism draws from its own random stream, so switching one on leaves the
rest of the story (users, photos, sessions) as in `demo` wherever it does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from kuai_assets.synth.sizes import SizeSpec

HOUR_MS = 3_600_000
TRAIN_HOURS = 36
TEST_HOURS = 12
SLOT_HOURS = 2  # exposure is piecewise constant over 2-hour slots
EXPOSURE_HALF_LIFE_HOURS = 8.0
EXPOSURE_LIFETIME_HOURS = 24.0
# The real timestamps are milliseconds shifted into 1994 (e.g. 760994920751).
BASE_TIME_MS = 760_994_920_751
LATENT_DIM = 24
POPULARITY_SIGMA = 1.6  # sd of a photo's log popularity


@dataclass(frozen=True)
class World:
    """Switches of the generative story. The defaults are the `demo` world.

    - click_blind_timeline: the pause before a user's next batch no longer includes what was
      watched in the batch; it is drawn independently of the batch's photos and clicks.
    - interest_drift: share of each user's topic interest replaced, linearly over the 48 hours, by
      a second independent interest (0: fixed interests). Drives both what is shown and clicks.
    - fine_taste: logit per unit of (user's unit direction . photo's within-subtopic latent detail);
      the detail is the visual latent's own noise, so it shows in the vector but in no topic,
      subtopic or cluster (0: no such taste; the latent noise is then drawn as before).
    - face_rate_scale / text_rate_scale: multiply each topic's probability of a face / cover text.
    - popular_appeal: logit per standard deviation of a photo's log popularity (the same latent
      that drives its exposure), so widely shown photos are also clicked more.
    """

    name: str
    summary: str
    click_blind_timeline: bool = False
    interest_drift: float = 0.0
    fine_taste: float = 0.0
    face_rate_scale: float = 1.0
    text_rate_scale: float = 1.0
    popular_appeal: float = 0.0

    def __post_init__(self):
        for name, low, high in (
            ("interest_drift", 0.0, 1.0),
            ("face_rate_scale", 0.0, 1.0),
            ("text_rate_scale", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"world {self.name!r}: {name} must be within [{low}, {high}], got {value}")

    def switches(self) -> dict:
        """The settings that differ from `demo`, for summaries."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("name", "summary") and getattr(self, f.name) != f.default
        }


WORLDS: dict[str, World] = {
    w.name: w
    for w in (
        World(
            "demo",
            "the original story: the next batch comes after what the user watched, fixed interests, "
            "taste over topics and subtopics, faces on ~38% and text on ~46% of photos",
        ),
        World(
            "click_blind_timeline",
            "as demo, but the pause before the next batch is independent of what was shown and clicked "
            "(the impression log's timing carries no label)",
            click_blind_timeline=True,
        ),
        World(
            "drifting_interests",
            "as demo, but each user's topic interest moves linearly over the 48 hours towards a second, "
            "independent one (80% of it replaced by the end; the test window is the furthest from early train)",
            interest_drift=0.8,
        ),
        World(
            "fine_visual_taste",
            "as demo, plus a per-user direction in the visual latent space that acts within every topic "
            "and subtopic (no cluster captures it; only the vectors themselves do)",
            fine_taste=0.8,
        ),
        World(
            "sparse_faces_text",
            "as demo, but faces on ~6% and cover text on ~7% of photos (the real data: 38% and 46%)",
            face_rate_scale=0.15,
            text_rate_scale=0.15,
        ),
        World(
            "popular_appeal",
            "as demo, plus clicks that rise with a photo's latent popularity (the same latent that "
            "drives how often it is shown)",
            popular_appeal=0.4,
        ),
        World(
            "all_shifts",
            "click-blind timeline, drifting interests, fine visual taste and sparse faces and text at once",
            click_blind_timeline=True,
            interest_drift=0.8,
            fine_taste=0.8,
            face_rate_scale=0.15,
            text_rate_scale=0.15,
        ),
    )
}


def get_world(name: str) -> World:
    try:
        return WORLDS[name]
    except KeyError:
        raise ValueError(f"Unknown world {name!r}; choose one of {', '.join(WORLDS)}") from None


@dataclass
class Topics:
    popularity: np.ndarray  # (T,) share of photos per topic
    visual_center: np.ndarray  # (T, Z)
    subtopic_offset: np.ndarray  # (T, S, Z)
    face_probability: np.ndarray  # (T,)
    male_probability: np.ndarray  # (T,)
    mean_age: np.ndarray  # (T,)
    text_probability: np.ndarray  # (T,)
    log_duration_median: np.ndarray  # (T,)
    topic_words: np.ndarray  # (T, W) word ranks specific to each topic
    quality_direction: np.ndarray  # (Z,)
    projection: np.ndarray  # (Z, D) latent -> visual


@dataclass
class Photos:
    """A candidate pool of photos for one split; only those shown end up in the files."""

    photo_id: np.ndarray  # int64, increasing
    topic: np.ndarray  # int16
    subtopic: np.ndarray  # int8
    quality: np.ndarray  # float32
    publish_hour: np.ndarray  # float32, hours since the start of train
    popularity: np.ndarray  # float32, heavy tailed
    duration: np.ndarray  # int32 seconds, 0 for a still picture
    has_text: np.ndarray  # bool
    # faces, flat: face_photo[i] is the photo (pool index) of face i
    face_photo: np.ndarray
    face_share: np.ndarray
    face_gender: np.ndarray
    face_age: np.ndarray
    face_appearance: np.ndarray
    # per photo face summaries used by the click model
    n_faces: np.ndarray
    male_share: np.ndarray
    mean_appearance: np.ndarray
    # words, flat: word_photo[i] is the photo (pool index) of cover word i
    word_photo: np.ndarray
    word_id: np.ndarray
    # (pool, Z) within-subtopic latent detail, only in worlds with a fine visual taste; the
    # visual vector's latent noise is then this instead of a fresh draw
    detail: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.photo_id)


@dataclass
class Users:
    user_id: np.ndarray  # int64
    interest: np.ndarray  # (U, T) sparse Dirichlet
    subtopic_taste: np.ndarray  # (U, T, S)
    base_logit: np.ndarray
    quality_taste: np.ndarray
    face_taste: np.ndarray
    male_taste: np.ndarray
    text_taste: np.ndarray
    duration_taste: np.ndarray
    batch_extra: np.ndarray  # mean extra photos per batch (batch size = 1 + geometric)
    phase_hours: np.ndarray  # personal shift of the daily rhythm
    n_train_rows: np.ndarray
    n_test_rows: np.ndarray
    # world extras (None when the world does not use them)
    late_interest: np.ndarray | None = None  # (U, T) the interest drifted towards
    taste_direction: np.ndarray | None = None  # (U, Z) unit vectors in the visual latent space

    def __len__(self) -> int:
        return len(self.user_id)


def make_topics(spec: SizeSpec, rng: np.random.Generator) -> Topics:
    T, S, Z = spec.n_topics, spec.n_subtopics, LATENT_DIM
    topic_words = rng.integers(20, spec.vocab_size, size=(T, 400))
    quality_direction = rng.standard_normal(Z)
    quality_direction /= np.linalg.norm(quality_direction)
    return Topics(
        popularity=rng.dirichlet(np.full(T, 3.0)),
        visual_center=rng.standard_normal((T, Z)) * 1.6,
        subtopic_offset=rng.standard_normal((T, S, Z)) * 0.7,
        face_probability=rng.beta(2.0, 3.3, size=T),
        male_probability=rng.beta(2.0, 2.0, size=T),
        mean_age=rng.uniform(16, 40, size=T),
        text_probability=rng.beta(3.0, 3.5, size=T),
        log_duration_median=rng.uniform(np.log(8), np.log(40), size=T),
        topic_words=topic_words,
        quality_direction=quality_direction,
        projection=(rng.standard_normal((Z, spec.vector_dim)) / np.sqrt(Z)).astype(np.float32),
    )


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return np.cumsum(weights) / weights.sum()


def pool_size_for(target_shown: int, n_rows: int, sigma: float, rng: np.random.Generator) -> int:
    """Candidate pool size whose expected number of distinct shown photos is `target_shown`.

    Impressions pick photos in proportion to a lognormal popularity; a photo is shown at least once
    with probability 1 - exp(-rows * w / sum(w)). Solved by bisection on a sample of weights.
    """
    sample = rng.lognormal(0.0, sigma, size=200_000)
    sample /= sample.mean()

    def expected_shown(pool: float) -> float:
        return pool * float(np.mean(1.0 - np.exp(-(n_rows / pool) * sample)))

    lo, hi = float(target_shown), float(target_shown) * 20
    if expected_shown(hi) < target_shown:
        return int(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_shown(mid) < target_shown:
            lo = mid
        else:
            hi = mid
    return int(np.ceil(hi))


def increasing_ids(n: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct, increasing, anonymised-looking ids starting above `start`."""
    gaps = rng.integers(1, 4, size=n)
    return start + np.cumsum(gaps)


def make_photos(
    spec: SizeSpec,
    topics: Topics,
    n_pool: int,
    first_id: int,
    publish_range: tuple[float, float],
    rng: np.random.Generator,
    popularity_sigma: float,
) -> Photos:
    T, S = spec.n_topics, spec.n_subtopics
    topic = rng.choice(T, size=n_pool, p=topics.popularity).astype(np.int16)
    subtopic = rng.integers(0, S, size=n_pool).astype(np.int8)
    quality = rng.standard_normal(n_pool).astype(np.float32)
    publish_hour = rng.uniform(*publish_range, size=n_pool).astype(np.float32)
    popularity = rng.lognormal(0.0, popularity_sigma, size=n_pool).astype(np.float32)

    duration = np.exp(topics.log_duration_median[topic] + 0.7 * rng.standard_normal(n_pool))
    duration = np.clip(np.rint(duration), 1, 600).astype(np.int32)
    duration[rng.random(n_pool) < 0.03] = 0  # still pictures

    has_face = rng.random(n_pool) < topics.face_probability[topic]
    n_faces = np.where(has_face, 1 + rng.poisson(0.2, size=n_pool), 0)
    crowd = has_face & (rng.random(n_pool) < 0.002)  # rare group photos, up to 20 faces
    n_faces[crowd] = rng.integers(5, 21, size=int(crowd.sum()))
    n_faces = n_faces.astype(np.int16)
    face_photo = np.repeat(np.arange(n_pool), n_faces)
    n_face_rows = len(face_photo)
    face_share = np.clip(rng.beta(2.0, 6.0, size=n_face_rows), 0.01, 1.0).astype(np.float32)
    face_gender = (rng.random(n_face_rows) < topics.male_probability[topic[face_photo]]).astype(
        np.int8
    )
    face_age = np.clip(
        np.rint(topics.mean_age[topic[face_photo]] + 7 * rng.standard_normal(n_face_rows)), 1, 80
    ).astype(np.int16)
    face_appearance = np.clip(
        np.rint(55 + 10 * quality[face_photo] + 12 * rng.standard_normal(n_face_rows)), 0, 99
    ).astype(np.int16)
    safe = np.maximum(n_faces, 1)
    male_share = (np.bincount(face_photo, weights=face_gender, minlength=n_pool) / safe).astype(
        np.float32
    )
    mean_appearance = (
        np.bincount(face_photo, weights=face_appearance, minlength=n_pool) / safe
    ).astype(np.float32)

    has_text = rng.random(n_pool) < topics.text_probability[topic]
    n_words = np.where(has_text, 1 + rng.poisson(2.5, size=n_pool), 0)
    word_photo = np.repeat(np.arange(n_pool), n_words)
    n_word_rows = len(word_photo)
    from_topic = rng.random(n_word_rows) < 0.6
    topic_rank = np.searchsorted(zipf_cdf(topics.topic_words.shape[1], 1.0), rng.random(n_word_rows))
    general_rank = np.searchsorted(zipf_cdf(spec.vocab_size, 1.05), rng.random(n_word_rows))
    word_rank = np.where(
        from_topic, topics.topic_words[topic[word_photo], topic_rank], general_rank
    )
    word_id = _anonymise_words(word_rank, spec.vocab_size, rng)

    return Photos(
        photo_id=increasing_ids(n_pool, first_id, rng),
        topic=topic,
        subtopic=subtopic,
        quality=quality,
        publish_hour=publish_hour,
        popularity=popularity,
        duration=duration,
        has_text=has_text,
        face_photo=face_photo,
        face_share=face_share,
        face_gender=face_gender,
        face_age=face_age,
        face_appearance=face_appearance,
        n_faces=n_faces,
        male_share=male_share,
        mean_appearance=mean_appearance,
        word_photo=word_photo,
        word_id=word_id,
    )


def _anonymise_words(rank: np.ndarray, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Map word ranks to anonymised ids. Id 0 is an ordinary, fairly common word (as released)."""
    permutation = np.random.default_rng(12345).permutation(vocab_size)
    zero_at = int(np.flatnonzero(permutation == 0)[0])
    permutation[[zero_at, 3]] = permutation[[3, zero_at]]
    return permutation[rank].astype(np.int64)


def make_users(spec: SizeSpec, rng: np.random.Generator) -> Users:
    U, T, S = spec.n_users, spec.n_topics, spec.n_subtopics
    activity = rng.lognormal(0.0, 0.9, size=U)
    min_rows = 100
    spare = spec.n_train_rows - min_rows * U
    if spare < 0:
        raise ValueError(f"size {spec.name}: {spec.n_train_rows} train rows cannot give {U} users 100 each")
    n_train = min_rows + np.floor(spare * activity / activity.sum()).astype(np.int64)
    n_train[: spec.n_train_rows - n_train.sum()] += 1
    test_share = rng.lognormal(0.0, 0.5, size=U) * activity
    n_test = np.maximum(1, np.floor(spec.n_test_rows * test_share / test_share.sum())).astype(np.int64)
    return Users(
        user_id=rng.choice(20 * U + 1000, size=U, replace=False).astype(np.int64),
        interest=rng.dirichlet(np.full(T, 0.25), size=U).astype(np.float32),
        subtopic_taste=(0.35 * rng.standard_normal((U, T, S))).astype(np.float32),
        base_logit=(0.8 * rng.standard_normal(U)).astype(np.float32),
        quality_taste=rng.normal(0.35, 0.15, size=U).astype(np.float32),
        face_taste=rng.normal(0.0, 0.35, size=U).astype(np.float32),
        male_taste=rng.normal(0.0, 0.6, size=U).astype(np.float32),
        text_taste=rng.normal(0.0, 0.2, size=U).astype(np.float32),
        duration_taste=rng.normal(-0.1, 0.25, size=U).astype(np.float32),
        batch_extra=rng.uniform(0.3, 4.0, size=U).astype(np.float32),
        phase_hours=rng.normal(0.0, 2.0, size=U).astype(np.float32),
        n_train_rows=n_train,
        n_test_rows=n_test,
    )


def visual_vectors(
    topics: Topics, photos: Photos, index: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """2048-d non-negative cover vectors (ReLU-like) for the photos at pool positions `index`."""
    t = photos.topic[index]
    noise = rng.standard_normal((len(index), LATENT_DIM)) if photos.detail is None else photos.detail[index]
    z = (
        topics.visual_center[t]
        + topics.subtopic_offset[t, photos.subtopic[index]]
        + 0.9 * photos.quality[index, None] * topics.quality_direction
        + 0.8 * noise
    ).astype(np.float32)
    x = z @ topics.projection
    x *= 0.5
    x += 0.1
    x += 0.25 * rng.standard_normal(x.shape, dtype=np.float32)
    np.maximum(x, 0.0, out=x)
    return x


def apply_world(world: World, topics: Topics, users: Users, rng: np.random.Generator) -> None:
    """Add the world's extras to the topics and users, drawing only from `rng` (not the demo streams)."""
    if world.face_rate_scale != 1.0:
        topics.face_probability = topics.face_probability * world.face_rate_scale
    if world.text_rate_scale != 1.0:
        topics.text_probability = topics.text_probability * world.text_rate_scale
    if world.interest_drift > 0:
        users.late_interest = rng.dirichlet(np.full(users.interest.shape[1], 0.25), size=len(users)).astype(
            np.float32
        )
    if world.fine_taste > 0:
        direction = rng.standard_normal((len(users), LATENT_DIM))
        users.taste_direction = (direction / np.linalg.norm(direction, axis=1, keepdims=True)).astype(np.float32)


def add_photo_detail(world: World, photos: Photos, rng: np.random.Generator) -> None:
    """Give each photo of the pool its latent detail when the world has a fine visual taste."""
    if world.fine_taste > 0:
        photos.detail = rng.standard_normal((len(photos), LATENT_DIM)).astype(np.float32)
