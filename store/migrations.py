"""The feedback store's schema, written once: numbered migrations with a slot for each thing the dialects spell
differently (store/sqlite.py and store/postgres.py fill them). A migration once released is never edited: a
change is a new one at the end. `tests/test_feedback.py` compares the two dialects' tables column by column.

Slots: `id` an auto-numbered primary key, `time` a point in time, `float` a number, `json` a JSON value, `bool`
a truth value, `json_object` the function that builds a JSON object, `events_by_type` and `jobs_created` the
indexes each dialect made for its own queries.
"""

from __future__ import annotations

from collections.abc import Mapping

SLOTS = ("id", "time", "float", "json", "bool", "json_object", "events_by_type", "jobs_created")

MIGRATIONS = (
    # 1: events, explicit preferences, rankings
    """
    CREATE TABLE events (
        id {id},
        user_id TEXT NOT NULL,
        article_id TEXT NOT NULL,
        type TEXT NOT NULL,
        ts {time} NOT NULL,
        dwell_seconds {float},
        ranking_id TEXT
    );
    CREATE INDEX events_user_ts ON events(user_id, ts);
    {events_by_type};
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        interests {json} NOT NULL DEFAULT '[]',
        mutes {json} NOT NULL DEFAULT '[]',
        updated_at {time} NOT NULL
    );
    CREATE TABLE rankings (
        ranking_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at {time} NOT NULL,
        strategy TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        adapter TEXT,
        weights {json} NOT NULL,
        profile_text TEXT NOT NULL,
        cold_start {bool} NOT NULL
    );
    CREATE INDEX rankings_user ON rankings(user_id, created_at);
    CREATE TABLE ranking_items (
        ranking_id TEXT NOT NULL REFERENCES rankings(ranking_id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        article_id TEXT NOT NULL,
        title TEXT NOT NULL,
        score {float} NOT NULL,
        relevance {float} NOT NULL,
        diversity {float} NOT NULL,
        freshness {float} NOT NULL,
        similarity {float} NOT NULL,
        affinity {float} NOT NULL,
        age_hours {float} NOT NULL,
        explanation TEXT,
        explanation_source TEXT,
        grounded_in {json} NOT NULL DEFAULT '[]',
        PRIMARY KEY (ranking_id, position)
    );
    CREATE INDEX ranking_items_article ON ranking_items(article_id);
    """,
    # 2: the popularity signal joins the blend
    """
    ALTER TABLE ranking_items ADD COLUMN popularity {float} NOT NULL DEFAULT 0;
    """,
    # 3: background jobs started from the API (training)
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        args {json} NOT NULL,
        status TEXT NOT NULL,
        created_at {time} NOT NULL,
        finished_at {time},
        exit_code INTEGER,
        log_path TEXT NOT NULL,
        pid INTEGER
    );
    {jobs_created};
    """,
    # 4: jobs that any instance can watch (heartbeat, output tail); one running job of a kind, enforced by
    # the schema too; the adapter registry's state (versions, stable ids, the active pointer and its history)
    """
    ALTER TABLE jobs ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN heartbeat_at {time};
    ALTER TABLE jobs ADD COLUMN log_tail TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX jobs_one_running ON jobs(kind) WHERE status = 'running';
    CREATE TABLE adapters (
        name TEXT PRIMARY KEY,
        active INTEGER,
        history {json} NOT NULL DEFAULT '[]'
    );
    CREATE TABLE adapter_versions (
        name TEXT NOT NULL REFERENCES adapters(name),
        version INTEGER NOT NULL,
        id INTEGER NOT NULL UNIQUE,
        created_at {time} NOT NULL,
        PRIMARY KEY (name, version)
    );
    """,
    # 5: a ranked item's signals in one JSON object, so that a new signal needs no new column
    """
    ALTER TABLE ranking_items ADD COLUMN signals {json} NOT NULL DEFAULT '{{}}';
    UPDATE ranking_items SET signals = {json_object}('relevance', relevance, 'similarity', similarity,
        'affinity', affinity, 'popularity', popularity, 'freshness', freshness, 'diversity', diversity);
    ALTER TABLE ranking_items DROP COLUMN relevance;
    ALTER TABLE ranking_items DROP COLUMN similarity;
    ALTER TABLE ranking_items DROP COLUMN affinity;
    ALTER TABLE ranking_items DROP COLUMN popularity;
    ALTER TABLE ranking_items DROP COLUMN freshness;
    ALTER TABLE ranking_items DROP COLUMN diversity;
    """,
    # 6: keys of event batches already stored, so that a retried batch is not stored twice; what a ranking
    # did without the LLM when it failed
    """
    CREATE TABLE event_batches (
        batch_key TEXT PRIMARY KEY,
        stored INTEGER NOT NULL,
        created_at {time} NOT NULL
    );
    CREATE INDEX event_batches_created ON event_batches(created_at);
    ALTER TABLE rankings ADD COLUMN degraded {json} NOT NULL DEFAULT '[]';
    """,
    # 7: LLM relevance computed ahead of requests, the background scorer's queue, where each ranked item's
    # relevance came from
    """
    CREATE TABLE relevance (
        user_id TEXT NOT NULL,
        scorer TEXT NOT NULL,
        article_id TEXT NOT NULL,
        score {float} NOT NULL,
        profile_key TEXT NOT NULL,
        scored_at {time} NOT NULL,
        PRIMARY KEY (user_id, scorer, article_id)
    );
    CREATE INDEX relevance_scored ON relevance(scored_at);
    CREATE TABLE scoring_queue (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        priority {float} NOT NULL,
        requests INTEGER NOT NULL,
        requested_at {time} NOT NULL,
        claimed_by TEXT,
        claimed_requests INTEGER,
        claimed_at {time},
        PRIMARY KEY (kind, subject)
    );
    CREATE INDEX scoring_queue_priority ON scoring_queue(priority);
    CREATE INDEX rankings_created ON rankings(created_at);
    ALTER TABLE ranking_items ADD COLUMN relevance_source TEXT;
    """,
    # 8: what exposure is shared between (each item's category and source) and the cap that moved it
    """
    ALTER TABLE ranking_items ADD COLUMN category TEXT NOT NULL DEFAULT '';
    ALTER TABLE ranking_items ADD COLUMN source TEXT NOT NULL DEFAULT '';
    ALTER TABLE ranking_items ADD COLUMN moved_by TEXT;
    """,
    # 9: the reader's voice (a rating's value, a comment's text); the experiment arm a feed was made in and
    # the pair of positions it put in play to measure position bias; stats by time
    """
    ALTER TABLE events ADD COLUMN value INTEGER;
    ALTER TABLE events ADD COLUMN text TEXT;
    ALTER TABLE rankings ADD COLUMN arm TEXT;
    ALTER TABLE rankings ADD COLUMN intra_list_distance REAL;
    ALTER TABLE rankings ADD COLUMN explored_pair INTEGER;
    CREATE INDEX events_ranking ON events(ranking_id);
    """,
    # 10: integrity. Who asked for each scoring task, and when each asker was last served (the queue is shared
    # fairly between clients); the experiment and the client of each feed; an event batch's digest (a key reused
    # for another batch is refused); erased readers' tombstones (every writer checks them); a reader's last
    # preference change made in chat (what "undo" reverts); checks instances sharing the store must agree on
    """
    ALTER TABLE scoring_queue ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    CREATE TABLE scoring_owners (
        owner TEXT PRIMARY KEY,
        served_at {time} NOT NULL
    );
    ALTER TABLE rankings ADD COLUMN experiment TEXT;
    ALTER TABLE rankings ADD COLUMN owner TEXT;
    ALTER TABLE event_batches ADD COLUMN digest TEXT;
    CREATE TABLE erased (
        user_key TEXT PRIMARY KEY,
        erased_at {time} NOT NULL
    );
    ALTER TABLE users ADD COLUMN last_change {json};
    CREATE TABLE service_checks (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE INDEX events_ranking_item ON events(ranking_id, article_id, type);
    """,
    # 11: the learning loop's history: what it trained, gated, put to an A/B test, promoted or rolled back, and why
    """
    CREATE TABLE loop_events (
        id {id},
        at {time} NOT NULL,
        kind TEXT NOT NULL,
        adapter TEXT,
        details {json} NOT NULL DEFAULT '{{}}'
    );
    CREATE INDEX loop_events_at ON loop_events(at);
    """,
    # 12: stories: the story a shown item is a copy of, how many copies it has, the copies it was chosen over and
    # why; a reader's followed stories
    """
    ALTER TABLE ranking_items ADD COLUMN story TEXT NOT NULL DEFAULT '';
    ALTER TABLE ranking_items ADD COLUMN copies INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE ranking_items ADD COLUMN chosen_over {json} NOT NULL DEFAULT '[]';
    ALTER TABLE ranking_items ADD COLUMN chosen_for TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN follows {json} NOT NULL DEFAULT '[]';
    """,
    # 13: readers whose profiles read the same share the LLM's scores (a score depends on the text alone)
    """
    CREATE INDEX relevance_profile ON relevance(scorer, profile_key);
    """,
)


def render(slots: Mapping[str, str]) -> tuple[str, ...]:
    """The migrations in one dialect."""
    missing = set(SLOTS) - set(slots)
    if missing:
        raise ValueError(f"a dialect must fill every slot; missing {sorted(missing)}")
    return tuple(script.format(**slots) for script in MIGRATIONS)
