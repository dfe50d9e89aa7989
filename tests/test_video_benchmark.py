"""benchmarks/video_inference.py at tiny sizes: every figure (chunked, whole video, N expressions of one video)
comes out, in the table and the JSON, so that the script cannot rot."""

import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture
def video_inference(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import video_inference

    return video_inference


def test_every_figure_at_tiny_sizes(video_inference, tmp_path, capsys):
    path = tmp_path / "results.json"
    assert video_inference.main(["--model", "tiny", "--frames", "2", "4", "--chunk", "2", "--text_width", "16",
                                 "--text_length", "4", "--repeats", "1", "--expressions", "1", "3",
                                 "--expression_frames", "4", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 expressions vs 1:" in out and "pairs/s" in out
    rows = json.loads(path.read_text())
    assert [(r["mode"], r["frames"]) for r in rows if r["mode"] != "expressions"] == [
        ("chunked", 2), ("chunked", 4), ("whole video", 2), ("whole video", 4)]
    expressions = [r for r in rows if r["mode"] == "expressions"]
    assert [(r["expressions"], r["frames"], r["chunk"]) for r in expressions] == [(1, 4, 2), (3, 4, 2)]
    for r in expressions:
        assert all(positive(r[k]) for k in ("seconds", "frames_per_s", "pairs_per_s", "cpu_ms_per_frame",
                                            "peak_rss_mib", "frames_per_s_ratio", "pairs_per_s_ratio"))
        assert r["frames_per_s"] == pytest.approx(r["frames"] / r["seconds"])
        assert r["pairs_per_s"] == pytest.approx(r["expressions"] * r["frames_per_s"])
    first, many = expressions
    assert first["frames_per_s_ratio"] == first["pairs_per_s_ratio"] == 1.0
    assert many["pairs_per_s_ratio"] == pytest.approx(3 * many["frames_per_s_ratio"])


def test_bad_arguments(video_inference):
    with pytest.raises(SystemExit):
        video_inference.main(["--chunk", "4", "--expression_frames", "6"])
    with pytest.raises(SystemExit):
        video_inference.main(["--expressions", "0"])
