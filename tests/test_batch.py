"""``ragpress batch``: counts, the errors file, a warm segment cache, and exactly-once resume after a
real SIGTERM and a real SIGKILL of a running driver.

One Ray instance for the module (the session's when one is already up), one redis-server, one
store of 30 Wikipedia passages plus 4 bad documents; the drivers that get killed are subprocesses
connected to that Ray instance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import shared_data

pytestmark = [pytest.mark.ray, pytest.mark.redis]

BAD = 4  # empty, invalid JSON, over max_chars, not UTF-8
MAX_CHARS = 2000


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    lines = shared_data("wiki_passages", "flashrag_wiki_sample1000.jsonl").read_bytes().splitlines()[:30]
    path = tmp_path_factory.mktemp("store") / "store.jsonl"
    bad = [b'{"id": "empty", "text": "   "}', b"not json", json.dumps({"id": "big", "text": "x" * 3000}).encode(),
           b'{"id": "latin1", "text": "caf\xe9"}']
    path.write_bytes(b"\n".join(lines[:10] + bad[:2] + lines[10:] + bad[2:]) + b"\n")
    return path


@pytest.fixture(scope="module")
def ray_address():
    """The session's Ray when one is up, else a private local one for this module."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    temp_dir = tempfile.mkdtemp(prefix="rpbt-", dir="/tmp") if started else None
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 object_store_memory=256 * 2**20, _temp_dir=temp_dir,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_url():
    from tests.services.conftest import local_redis

    server = local_redis().start()
    yield server.url
    server.stop()


def _shard_ids(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for p in sorted((out / "shards").glob("part-*.parquet"))
            for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]


def test_precompute_then_compress_hits(hotpot_requests):
    """Every precomputable method: compress after precompute reads the query-independent work back."""
    from ragpress.core.cache import make_cache
    from ragpress.core.registry import create_compressor

    request = hotpot_requests[0]
    for method in ("embed-sentences", "embed-passages", "exit"):
        cache = make_cache()
        pre = create_compressor(method)
        pre.segment_cache = cache
        stats = pre.precompute(request.passages)
        assert stats.precomputable and stats.computed == stats.entries > 0 and sum(stats.segments) > 0
        after = create_compressor(method)
        after.segment_cache = cache
        after.compress(request)
        assert after.segment_hits == after.segment_lookups - 1, method  # all but the query
    truncate = create_compressor("truncate")
    assert truncate.precompute(request.passages).precomputable is False


def test_precompute_then_compress_hits_tcra_summaries(causal_lm):
    """TCRA's summaries for a ratio: compress at that ratio reads them back (one short passage:
    LM generation). LongCodeZip's line perplexities go the same way but its compress costs tens
    of CPU seconds of query-dependent scoring, so it is checked by hand, not here."""
    from ragpress.core.cache import make_cache
    from ragpress.core.errors import ConfigError
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import Budget, CompressionRequest, Passage

    prose = [Passage(id="a", title="Acme", text="Acme was founded by Jane Roe in 1990 in Dayton, Ohio. It sells "
                                                 "anvils and rockets. Its headquarters moved to Phoenix in 2001.")]
    cache = make_cache()
    pre = create_compressor("tcra-summary")
    pre.segment_cache = cache
    stats = pre.precompute(prose, Budget(ratio=0.5))
    assert (stats.entries, stats.hits) == (1, 0) and 0 < stats.tokens_out[0] < stats.tokens_in[0]
    after = create_compressor("tcra-summary")
    after.segment_cache = cache
    after.compress(CompressionRequest(query="", passages=prose, budget=Budget(ratio=0.5)))
    assert after.segment_hits == after.segment_lookups == 1
    with pytest.raises(ConfigError, match="ratio"):
        pre.precompute(prose, Budget(tokens=20))
    assert create_compressor("tcra-semantic").precompute(prose).precomputable is False


def _batch_cmd(store: Path, out: Path, ray_address: str) -> list[str]:
    return [sys.executable, "-m", "ragpress.cli", "batch", str(store), "--methods", "embed-sentences,truncate",
            "--out", str(out), "--ray-address", ray_address, "--max-chars", str(MAX_CHARS), "--num-cpus", "0.25",
            "--batch-size", "1", "--read-docs", "1", "--shard-docs", "1", "--no-progress"]


def _start_and_wait_for_shards(cmd, out: Path, shards: int, timeout_s: float = 240) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    before = len(_shard_ids(out)) if (out / "shards").is_dir() else 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "shards").is_dir() and len(_shard_ids(out)) - before >= shards:
            return proc
        time.sleep(0.02)
    proc.kill()
    out_, err = proc.communicate()
    pytest.fail(f"the batch job did not commit {shards} shards while running (rc {proc.returncode}): {err[-2000:]}")


def test_stop_kill_resume_exactly_once_and_warm(store, ray_address, redis_url, tmp_path):
    """Run 1 stopped by SIGTERM, run 2 killed by SIGKILL (both drivers are subprocesses), run 3
    (the same job, in process) finishes the rest: every id once, the errors file, a warm cache."""
    import pyarrow.parquet as pq

    from ragpress.batch import BatchConfig, StageSpec, load_entries, run_batch
    from ragpress.core.cache import make_cache
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import CompressionRequest, Passage

    out = tmp_path / "job"
    cmd = _batch_cmd(store, out, ray_address) + ["--cache", redis_url]

    # SIGTERM: stops after a commit, exit 0, a summary that says so
    proc = _start_and_wait_for_shards(cmd, out, shards=2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by SIGTERM" in stdout
    after_term = _shard_ids(out)
    assert 2 <= len(after_term) < 34 and len(set(after_term)) == len(after_term)

    # SIGKILL of the driver half-way: committed shards stay, nothing half-written counts
    proc = _start_and_wait_for_shards(cmd, out, shards=2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    after_kill = _shard_ids(out)
    assert len(after_kill) < 34, "the job finished before it was killed: nothing left to resume"
    assert len(set(after_kill)) == len(after_kill)

    # the same job again finishes the rest: every id exactly once, errors included
    cfg = BatchConfig(source=str(store), out=str(out), methods=["embed-sentences", "truncate"], cache_url=redis_url,
                      max_chars=MAX_CHARS, stage=StageSpec(num_cpus=0.25, batch_size=8), shard_docs=10,
                      read_docs=8, progress=False)
    report = run_batch(cfg)
    assert report.done_before == len(after_kill) and report.documents == 34 - len(after_kill)
    assert report.methods["truncate"]["precomputable"] is False  # nothing to do ahead of queries: no stage
    ids = _shard_ids(out)
    assert len(ids) == len(set(ids)) == 34
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    reasons = {e["id"]: e["reason"] for e in errors}
    assert len(errors) == BAD and all(e["source"].startswith(str(store)) for e in errors)
    assert "empty" in reasons["empty"] and "size limit" in reasons["big"]
    assert any("invalid JSON" in r for r in reasons.values()) and any("not UTF-8" in r for r in reasons.values())
    rows = [r for p in sorted((out / "shards").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert all(r["work"][0]["segments"] > 0 and r["tokens_in"] > 0 for r in rows if r["error"] is None)

    # a query over processed documents hits the cache for every sentence; only the query is new
    docs = [json.loads(x) for x in store.read_text(encoding="utf-8", errors="replace").splitlines()[:3]]
    request = CompressionRequest(query="Who was Evan Morris?", passages=[
        Passage(id=d["id"], title=d["title"], text=d["text"]) for d in docs])
    warm = create_compressor("embed-sentences")
    warm.segment_cache = make_cache(redis_url)
    warm_text = warm.compress(request).text
    lookups = warm.segment_lookups
    assert warm.segment_hits == lookups - 1 >= 9

    # the shards carry the same entries: loaded into an empty cache, the query is as warm
    fresh = make_cache()
    assert load_entries(out, fresh) >= sum(r["work"][0]["segments"] for r in rows if r["error"] is None)
    from_parquet = create_compressor("embed-sentences")
    from_parquet.segment_cache = fresh
    assert from_parquet.compress(request).text == warm_text
    assert from_parquet.segment_hits == lookups - 1

    # a rerun of the finished job does nothing and starts nothing
    again = run_batch(cfg)
    assert (again.documents, again.done_before) == (0, 34)


def test_emit_text_writes_a_compressed_store_that_index_build_takes(store, ray_address, tmp_path):
    """``--emit text`` with a query-independent method: every good document once, at the budget,
    its spans exact source text, its metadata kept; JSONL and Parquet both index as they are.
    Query-aware and soft-token methods are refused with the reason."""
    import pyarrow.parquet as pq

    from ragpress.batch import BatchConfig, StageSpec, run_batch
    from ragpress.core.errors import ConfigError
    from ragpress.core.tokens import get_token_counter
    from ragpress.indexes import build_index

    out = tmp_path / "text"
    cfg = BatchConfig(source=str(store), out=str(out), methods=["truncate"], emit="text", ratio=0.5,
                      max_chars=MAX_CHARS, stage=StageSpec(num_cpus=0.25, batch_size=8), read_docs=8, progress=False)
    report = run_batch(cfg)
    assert (report.documents, report.errors, report.emitted) == (34, BAD, 30)
    originals = {}
    for line in store.read_bytes().splitlines():
        try:
            d = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        originals[d["id"]] = d
    rows = [json.loads(x) for x in (out / "compressed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 30
    counter = get_token_counter()
    for r in rows:
        info, orig = r["ragpress"], originals[r["id"]]
        assert info["method"] == "truncate" and r["title"] == orig["title"]
        assert 0 < info["tokens_after"] <= info["tokens_before"] // 2 + 1 < info["tokens_before"]
        assert info["tokens_before"] == counter.count(f"{orig['title']}\n{orig['text']}")
        assert "".join(orig["text"][a:b] for a, b in info["spans"]) == r["text"]  # truncate keeps one prefix span
        assert orig["text"].startswith(r["text"]) and len(r["text"]) < len(orig["text"])
    table = pq.read_table(out / "compressed.parquet")
    assert table.num_rows == 30 and set(table.column("id").to_pylist()) == {r["id"] for r in rows}
    for name in ("compressed.jsonl", "compressed.parquet"):
        index = build_index(out / name, show_progress=False)
        assert len(index.passages) == 30, name  # short texts: one chunk each
        assert index.passages[0].metadata["ragpress"]["method"] == "truncate"
    again = run_batch(cfg)  # a finished job: nothing redone, the store written again from the shards
    assert (again.documents, again.done_before, again.emitted) == (0, 34, 30)

    with pytest.raises(ConfigError, match="query-aware.*--emit work"):
        BatchConfig(source=str(store), out=str(tmp_path / "x"), methods=["exit"], emit="text")
    with pytest.raises(ConfigError, match="soft tokens"):
        BatchConfig(source=str(store), out=str(tmp_path / "x"), methods=["arc"], emit="text")


def test_a_worker_killed_mid_job_is_restarted_and_every_id_lands_once(ray_address, tmp_path):
    """SIGKILL of the worker actor while the job runs: Ray restarts it and retries its batch; the
    job finishes, every id in exactly one committed shard, no error rows, the restart in the summary."""
    import pyarrow.parquet as pq

    lines = shared_data("wiki_passages", "flashrag_wiki_sample1000.jsonl").read_bytes().splitlines()[100:220]
    src = tmp_path / "store.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "ragpress.cli", "batch", str(src), "--methods", "embed-sentences", "--out", str(out),
           "--ray-address", ray_address, "--num-cpus", "0.25", "--batch-size", "2", "--read-docs", "2",
           "--shard-docs", "2", "--no-progress", "--json"]
    proc = _start_and_wait_for_shards(cmd, out, shards=2)
    shards = sorted((out / "shards").glob("part-*.parquet"))
    worker = pq.read_table(shards[0], columns=["worker"]).column("worker")[0].as_py()
    os.kill(int(worker.split(":")[1]), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(stdout[stdout.index("{"):])
    ids = _shard_ids(out)
    assert report["documents"] == len(ids) == len(set(ids)) == 120, "some id is missing or committed twice"
    assert report["errors"] == 0 and report["complete"]
    assert report["restarts"] >= 1, "the restart is not in the summary"
    workers = {w for p in (out / "shards").glob("part-*.parquet")
               for w in pq.read_table(p, columns=["worker"]).column("worker").to_pylist()}
    assert worker in workers and len(workers) >= 2


def _qa_passages(n: int) -> list[dict]:
    """``n`` distinct passages of the shared QA files (the store a user would compress)."""
    out, seen = [], set()
    for name in ("hotpotqa/hotpotqa_dev_ircot500.jsonl", "musique/musique_ans_dev_migres200.jsonl",
                 "hotpotqa/hotpotqa_dev_distractor_sf.jsonl"):
        for line in shared_data(*name.split("/")).read_text(encoding="utf-8").splitlines():
            for p in json.loads(line)["passages"]:
                key = (p.get("title"), p["text"])
                if p["text"].strip() and key not in seen:
                    seen.add(key)
                    out.append({"id": f"p{len(out)}", "title": p.get("title"), "text": p["text"], "lang": "en"})
                    if len(out) == n:
                        return out
    pytest.skip(f"the shared QA files hold fewer than {n} distinct passages")


def test_a_store_on_s3_is_read_and_its_compressed_copy_written_back(ray_address, tmp_path):
    """Source and job folder on a real S3-compatible server on loopback (moto's server): 3,000
    JSONL documents and a folder of Parquet files, read by Ray Data's readers through pyarrow's
    S3 filesystem; shards and the compressed store written back as objects; no credential in job.json.
    The blocks' budget (1 MiB, under the 1.8 MB file) holds the read back without stalling the job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ragpress.batch import BatchConfig, StageSpec, run_batch
    from ragpress.testing.s3 import LocalS3

    docs = _qa_passages(3000)
    with LocalS3() as s3:
        s3.create_bucket("docs")
        s3.upload_bytes("".join(json.dumps(d) + "\n" for d in docs).encode(), "docs", "store/docs.jsonl")
        for k in range(2):  # a folder of Parquet files, 200 documents
            buf = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist(docs[k * 100:(k + 1) * 100]), buf)
            s3.upload_bytes(buf.getvalue().to_pybytes(), "docs", f"pq/part-{k}.parquet")
        stage = StageSpec(num_cpus=0.25, batch_size=256)
        cfg = BatchConfig(source=s3.uri("docs", "store/docs.jsonl"), out=s3.uri("docs", "jobs/jsonl"),
                          methods=["truncate"], emit="text", ratio=0.5, stage=stage, read_docs=512, blocks_mb=1,
                          progress=False)
        report = run_batch(cfg)
        assert (report.documents, report.errors, report.emitted) == (3000, 0, 3000)
        keys = s3.list("docs", "jobs/jsonl/")
        assert any(k.startswith("jobs/jsonl/shards/part-") for k in keys)
        assert "testing:testing" not in s3.read_bytes("docs", "jobs/jsonl/job.json").decode()
        rows = [json.loads(x) for x in s3.read_bytes("docs", "jobs/jsonl/compressed.jsonl").decode().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(d["id"] for d in docs)
        assert all(r["lang"] == "en" and r["ragpress"]["tokens_after"] < r["ragpress"]["tokens_before"] for r in rows)
        assert run_batch(cfg).documents == 0  # resumed from the shards on S3: nothing left

        cfg = cfg.model_copy(update={"source": s3.uri("docs", "pq/"), "out": str(tmp_path / "pq")})
        report = run_batch(cfg)
        assert (report.documents, report.errors, report.emitted) == (200, 0, 200)
        table = pq.read_table(tmp_path / "pq" / "compressed.parquet")
        assert sorted(table.column("id").to_pylist()) == sorted(d["id"] for d in docs[:200])


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except psutil.Error:  # gone, or a zombie, since it was listed
        return []


def test_sigterm_during_a_slow_batch_stops_at_once_without_waiting_for_it(tmp_path):
    """A stop request does not wait for the batch in flight (here ``tcra-semantic`` over one block
    of 256 documents: minutes of work): the job commits what has arrived, ends its private local Ray
    and exits 0 within seconds, and the next run redoes the unfinished work. The SIGTERM goes to the
    job's whole process group (its Ray runs in a session of its own and never sees it)."""
    import psutil

    docs = _qa_passages(256)
    src = tmp_path / "store.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "job"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ragpress.cli", "batch", str(src), "--methods", "tcra-semantic",
                             "--emit", "text", "--out", str(out), "--batch-size", "256", "--read-docs", "256",
                             "--ray-num-cpus", "2", "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:  # the worker actor is up: its batch is running
            if any("WorkStage" in " ".join(_cmdline(p)) for p in psutil.Process(proc.pid).children(recursive=True)):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the worker actor never started (the job's rc: {proc.poll()})")
        time.sleep(3)  # its model loads and the 256-document batch begins
        tree = psutil.Process(proc.pid).children(recursive=True)  # the job's Ray: gcs, raylet, workers
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # to its whole process group, as a supervisor may send it
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr[-2000:]
        assert "stopped by SIGTERM" in stdout and time.monotonic() - t < 60
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert not alive, f"processes left behind: {[_cmdline(p)[:2] for p in alive]}"
    finally:  # a failed assertion must not leave the job running
        if proc.poll() is None:
            for p in psutil.Process(proc.pid).children(recursive=True):
                p.kill()
            proc.kill()
            proc.communicate()
    assert _shard_ids(out) == [] and json.loads((out / "summary.json").read_text())["complete"] is False


def test_a_job_runs_on_a_ray_whose_cpus_are_mostly_taken(store, ray_address, tmp_path):
    """A job on a cluster busy with other work (here all but 0.5 of its free CPUs held by an idle
    actor, as Serve replicas hold them in the session's Ray) still runs: no stage of it asks for a
    whole CPU (Ray Data's repartition tasks did, and waited forever)."""
    import ray

    from ragpress.batch import BatchConfig, StageSpec, run_batch

    free = ray.available_resources().get("CPU", 0)
    if free < 0.5:
        pytest.skip(f"this Ray has {free} CPUs free: not even the job's own 0.5")

    @ray.remote
    class Hold:
        def ready(self) -> bool:
            return True

    hold = Hold.options(num_cpus=free - 0.5).remote() if free > 0.5 else None
    try:
        if hold is not None:
            ray.get(hold.ready.remote(), timeout=60)
        cfg = BatchConfig(source=str(store), out=str(tmp_path / "busy"), methods=["truncate"], emit="text", ratio=0.5,
                          max_chars=MAX_CHARS, stage=StageSpec(num_cpus=0.25, batch_size=8), read_docs=8,
                          progress=False)
        report = run_batch(cfg)
        assert (report.documents, report.emitted) == (34, 30)
    finally:
        if hold is not None:
            ray.kill(hold)
