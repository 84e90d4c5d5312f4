"""The scale-out configuration: the same article store against a real Chroma server (`chroma run`)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.store import ArticleStore, chroma_client
from tests.conftest import CORPUS, free_port, wait_until_up

CHROMA = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))


@pytest.fixture
def chroma_url(tmp_path):
    if not Path(CHROMA).exists():
        pytest.skip("the chroma command is not installed")
    port = free_port()
    server = subprocess.Popen(
        [CHROMA, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/api/v2/heartbeat", server, 60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_article_store_over_http(chroma_url, embedder, tmp_path):
    store = ArticleStore(chroma_client(tmp_path / "unused", chroma_url), embedder, "articles")
    assert store.upsert(CORPUS) == len(CORPUS) and store.count() == len(CORPUS)
    hits = store.search(text="football playoff game", k=3, exclude_ids=["s1"])
    assert [h.article.category for h in hits] == ["sports"] * 3 and "s1" not in {h.article.id for h in hits}
    assert store.get(["t1"])["t1"].article == CORPUS[10]
    assert not (tmp_path / "unused").exists()  # nothing embedded was created
