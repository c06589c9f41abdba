"""benchmarks/layer_diag.py --cache: a model's per-bin scores are reused only when nothing they depend
on changed (the model's bytes, the teacher's, the data's manifest, the settings), and an entry is
written whole or not at all."""
from conftest import load_script


def _files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.jsonl").write_text('{"path": "a.wav", "caption": "x"}\n')
    (tmp_path / "teacher.safetensors").write_bytes(b"teacher-1")
    (tmp_path / "model.safetensors").write_bytes(b"model-1")
    return tmp_path / "teacher.safetensors", tmp_path / "data", tmp_path / "model.safetensors"


def test_cache_key_follows_everything_the_scores_depend_on(tmp_path):
    ld = load_script("benchmarks/layer_diag.py", "presto_layer_diag")
    teacher, data, model = _files(tmp_path)
    args = (teacher, data, 96, 2, 0, 1.0, 4.0)
    base = ld.result_key(model, ld.cache_setting(*args))
    assert base == ld.result_key(model, ld.cache_setting(*args))  # stable
    changed = []
    for other in ((teacher, data, 96, 2, 0, 2.0, 4.0), (teacher, data, 48, 2, 0, 1.0, 4.0),
                  (teacher, data, 96, 4, 0, 1.0, 4.0), (teacher, data, 96, 2, 1, 1.0, 4.0)):
        changed.append(ld.result_key(model, ld.cache_setting(*other)))
    model.write_bytes(b"model-2")
    changed.append(ld.result_key(model, ld.cache_setting(*args)))
    model.write_bytes(b"model-1")
    teacher.write_bytes(b"teacher-2")
    changed.append(ld.result_key(model, ld.cache_setting(*args)))
    teacher.write_bytes(b"teacher-1")
    (data / "manifest.jsonl").write_text('{"path": "b.wav", "caption": "y"}\n')
    changed.append(ld.result_key(model, ld.cache_setting(*args)))
    assert base not in changed and len(set(changed)) == len(changed)


def test_entries_round_trip_and_a_partial_write_is_no_entry(tmp_path):
    ld = load_script("benchmarks/layer_diag.py", "presto_layer_diag")
    cache = tmp_path / "cache"
    assert ld.read_cached(cache, "k1") is None
    ld.write_cached(cache, "k1", {"dn": [0.5, 0.25], "st": [0.0, 0.125]})
    assert ld.read_cached(cache, "k1") == {"dn": [0.5, 0.25], "st": [0.0, 0.125]}
    (cache / "k2.json.tmp").write_text('{"dn": [0.5')  # a run killed mid-write
    assert ld.read_cached(cache, "k2") is None
