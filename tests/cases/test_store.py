"""Case folders: resume after crashes (no loss, no duplicates), changed and bad inputs, several networks, ranks."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import cases.batch as batch_mod
from cases.batch import run_batch
from cases.inputs import describe_input
from cases.store import CaseError, CaseStore
from detector.images import load_image
from detector.settings import ProjectorSettings
from stylegan.config import GeneratorConfig
from stylegan.formats import save_network
from stylegan.generator import Generator
from stylegan.imageio import save_png

SETTINGS = ProjectorSettings(steps=4, w_avg_samples=256)


def mse_distance(a, b):
    return (a - b).square().mean(dim=[1, 2, 3])


def tiny_generator(seed):
    torch.manual_seed(seed)
    return Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                                     channel_max=16)).eval()


def make_images(folder, n_fake=3, n_real=3, G=None):
    folder.mkdir(parents=True, exist_ok=True)
    G = G or tiny_generator(0)
    with torch.no_grad():
        imgs = G(torch.randn(n_fake, 32, generator=torch.Generator().manual_seed(5)), noise_mode="const")
    for i in range(n_fake):
        save_png(imgs[i], folder / f"fake{i}.png")
    rng = np.random.RandomState(1)
    for i in range(n_real):
        Image.fromarray(rng.randint(0, 255, (20, 18, 3), dtype=np.uint8)).save(folder / f"real{i}.png")
    return folder


@pytest.fixture
def env(tmp_path):
    G = tiny_generator(0)
    save_network(tmp_path / "g.pt", G)
    save_network(tmp_path / "g2.pt", tiny_generator(1))
    make_images(tmp_path / "imgs", G=G)
    return tmp_path


def run(env, case, inputs=None, **kw):
    kw.setdefault("batch_size", 2)
    models = kw.pop("models_paths", [env / "g.pt"])
    return run_batch(inputs or [env / "imgs"], models, env / case, SETTINGS, mse_distance, **kw)


def all_groups(store):
    """Every (input, model) group in every batch file, duplicates included."""
    out = []
    for f in store.batch_files():
        with h5py.File(f, "r") as h:
            out += [(i, m) for i in h for m in h[i]]
    return out


def distances(store):
    return {r.key: r.distance for r in store.results(load=False)}


def test_fresh_run_and_rerun_skips(env):
    s = run(env, "case")
    assert (s.inputs, s.distinct, s.processed, s.already_done) == (6, 6, 6, 0)
    assert any("g.pt has no calibration" in w and "without a verdict" in w for w in s.warnings)
    assert len(s.batch_files) == 3
    store = CaseStore.open(env / "case")
    m = store.manifest
    assert m["seed"] == 0 and m["settings"]["steps"] == 4 and len(m["inputs"]) == 6
    assert {"torch", "numpy", "h5py", "lpips"} <= set(m["libraries"])
    assert m["models"][0]["file_sha256"] and m["models"][0]["weights_sha256"]
    names = [f"{k}{i}.png" for k in ("fake", "real") for i in range(3)]
    assert sorted(Path(e["path"]).name for e in m["inputs"]) == names
    for e in m["inputs"]:  # each file's own bytes
        data = Path(e["path"]).read_bytes()
        assert (e["sha256"], e["size"], e["format"]) == (hashlib.sha256(data).hexdigest(), len(data), "PNG")
    assert sorted(m["batches"]) == [p.name for p in store.batch_files()]
    recs = list(store.results())
    assert len(recs) == 6
    for r in recs:  # the stored target is the input's pixels, the stored projection the one the distance is of
        assert torch.equal(r.target, load_image(r.path, 16).tensor[0])
        assert (r.result.image - r.target).square().mean().item() == pytest.approx(r.distance, abs=1e-6)
    assert all((r.threshold_source, r.threshold, r.verdict) == ("none", None, "no verdict") for r in recs)
    s2 = run(env, "case")
    assert (s2.processed, s2.already_done, s2.batch_files) == (0, 6, [])


def test_resume_after_crash_in_the_middle_of_a_batch(env, monkeypatch):
    real = batch_mod._project_batch
    calls = {"n": 0}

    def crashing(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")  # after projecting, before the batch is written
        return out

    monkeypatch.setattr(batch_mod, "_project_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(env, "case")
    store = CaseStore.open(env / "case")
    assert len(store.done_keys()) == 2  # the first batch survived, the one in flight is lost
    assert not list((env / "case" / "results").glob(".*.tmp"))
    monkeypatch.setattr(batch_mod, "_project_batch", real)
    s = run(env, "case")
    assert (s.processed, s.already_done) == (4, 2)
    groups = all_groups(CaseStore.open(env / "case"))
    assert len(groups) == len(set(groups)) == 6  # no loss, no duplicates
    run(env, "ref")  # uninterrupted
    a, b = distances(CaseStore.open(env / "case")), distances(CaseStore.open(env / "ref"))
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def test_crash_between_batch_file_and_manifest(env, monkeypatch):
    orig = CaseStore.save_manifest
    state = {"n": 0}

    def failing(self):
        state["n"] += 1
        if state["n"] == 3:  # 1: create, 2: inputs recorded, 3: first batch bookkeeping
            raise KeyboardInterrupt("killed")
        orig(self)

    monkeypatch.setattr(CaseStore, "save_manifest", failing)
    with pytest.raises(KeyboardInterrupt):
        run(env, "case")
    store = CaseStore.open(env / "case")
    assert store.manifest["batches"] == [] and len(store.batch_files()) == 1
    monkeypatch.setattr(CaseStore, "save_manifest", orig)
    s = run(env, "case")
    assert (s.processed, s.already_done) == (4, 2)
    store = CaseStore.open(env / "case")
    assert sorted(store.manifest["batches"]) == [p.name for p in store.batch_files()]  # adopted
    groups = all_groups(store)
    assert len(groups) == len(set(groups)) == 6


def test_duplicate_keys_across_files_are_read_once(env):
    run(env, "case")
    store = CaseStore.open(env / "case")
    first = store.batch_files()[0]
    shutil.copy(first, first.with_name("batch-r000-000099.h5"))  # as if written twice
    store = CaseStore.open(env / "case")
    recs = list(store.results(load=False))
    assert len(recs) == 6 and len({r.key for r in recs}) == 6
    assert all(r.batch_file != "batch-r000-000099.h5" for r in recs)  # the first file in sorted order wins
    # write_batch never writes a key that is already there
    rec = next(store.results())
    assert store.write_batch([rec]) is None


def test_changed_input_is_detected_and_reprojected(env):
    run(env, "case")
    victim = env / "imgs" / "real0.png"
    old = describe_input(victim).sha256
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(victim)
    store = CaseStore.open(env / "case")
    new, done, changed = store.check_inputs([describe_input(p) for p in sorted((env / "imgs").iterdir())])
    assert [(c.path, o) for c, o in changed] == [(str(victim), old)]
    assert [n.path for n in new] == [str(victim)] and len(done) == 5
    s = run(env, "case")
    assert s.changed == [{"path": str(victim), "old_sha256": old, "new_sha256": describe_input(victim).sha256}]
    assert s.processed == 1
    store = CaseStore.open(env / "case")
    assert store.manifest["changed"][0]["old_sha256"] == old
    recs = list(store.results(load=False))
    stale = [r for r in recs if not r.current]
    assert len(recs) == 7 and len(stale) == 1 and stale[0].input_sha256 == old


def test_bad_and_unreadable_inputs_are_recorded_not_retried(env):
    (env / "imgs" / "notes.png").write_text("not an image")
    s = run(env, "case")
    assert len(s.errors) == 1 and "notes.png" in s.errors[0]["error"]
    store = CaseStore.open(env / "case")
    assert [e["path"] for e in store.manifest["errors"]] == [str(env / "imgs" / "notes.png")]
    assert s.processed == 7
    s2 = run(env, "case")
    assert s2.processed == 0 and s2.already_done == 7


def test_other_parameters_refused(env):
    run(env, "case")
    with pytest.raises(CaseError, match="seed"):
        run(env, "case", seed=1)
    with pytest.raises(CaseError, match=r"projector settings differ \(steps\)"):
        run_batch([env / "imgs"], [env / "g.pt"], env / "case", ProjectorSettings(steps=5, w_avg_samples=256),
                  mse_distance)
    # App. D's lr against the default one: named, with the way back
    run_batch([env / "imgs"], [env / "g.pt"], env / "case2", ProjectorSettings(steps=4, w_avg_samples=256, lr=0.1),
              mse_distance)
    with pytest.raises(CaseError, match=r"differ \(lr\) \(cases made before .* --method appd\)"):
        run_batch([env / "imgs"], [env / "g.pt"], env / "case2", ProjectorSettings(steps=4, w_avg_samples=256),
                  mse_distance)
    # device and chunk size do not change results: allowed
    run_batch([env / "imgs"], [env / "g.pt"], env / "case",
              ProjectorSettings(steps=4, w_avg_samples=256, chunk_size=1), mse_distance)



def test_model_calibrated_after_the_case_began_is_named_as_the_cause(env):
    """Storing a calibration rewrites our .pt (new file sha256, same weights): resuming is refused, because the
    recorded verdicts used the old threshold, and the message says why rather than only "files differ"."""
    from detector.calibration import record_from_distances
    from detector.calibration_store import store_calibration

    run(env, "case")
    store_calibration(record_from_distances([0.1, 0.2], [0.5, 0.6], target_fpr=0.0).to_dict(), env / "g.pt")
    with pytest.raises(CaseError, match="weights are the same, so a calibration was probably stored"):
        run(env, "case")
    save_network(env / "g.pt", tiny_generator(2))  # other weights: only "files differ"
    with pytest.raises(CaseError, match=r"model files differ \(by sha256, in order\) \(use"):
        run(env, "case")

def test_two_networks(env):
    s = run(env, "case", models_paths=[env / "g.pt", env / "g2.pt"], threshold=0.05)
    assert s.processed == 6
    store = CaseStore.open(env / "case")
    assert [m["name"] for m in store.manifest["models"]] == ["g", "g2"]
    recs = list(store.results(load=False))
    assert len(recs) == 12
    from cases.records import attribute_records

    names = {m["file_sha256"]: m["name"] for m in store.manifest["models"]}
    by_input = {}
    for r in recs:
        by_input.setdefault(r.input_sha256, []).append(r)
    files = {e["sha256"]: Path(e["path"]).name for e in store.manifest["inputs"]}
    decided = {}
    for sha, rs in by_input.items():  # one user threshold for both: the ratios order as the distances do
        att = attribute_records(rs, names)
        near, far = sorted(rs, key=lambda r: r.distance)
        dec = att["decision"]
        assert (dec["best"], dec["runner_up"]) == (names[near.model_sha256], names[far.model_sha256])
        assert dec["margin"] == pytest.approx(far.distance / near.distance)
        decided[files[sha]] = (att["verdict"], att["model"], dec["best"])
    # After 4 steps every image is still far above 0.05 under both networks (measured: 0.39 and more), so nothing
    # is attributed; g's own images already come back closer under g than under g2 (0.44-0.48 against 0.53-0.70).
    assert {f: v[:2] for f, v in decided.items()} == {f"{k}{i}.png": ("not attributed", None)
                                                      for k in ("fake", "real") for i in range(3)}
    assert [decided[f"fake{i}.png"][2] for i in range(3)] == ["g", "g", "g"]


def test_decisions_do_not_depend_on_the_batch_or_a_restart(env, monkeypatch):
    """Two networks, one image at a time, against three at a time after a crash and a restart: the same
    distances and the same decisions for every image."""
    from cases.records import attribute_records

    models = [env / "g.pt", env / "g2.pt"]
    run(env, "one", models_paths=models, threshold=0.05, batch_size=1)
    real = batch_mod._project_batch

    def crashing(*a, **kw):
        raise KeyboardInterrupt("killed")

    calls = {"n": 0}

    def crash_second(*a, **kw):
        calls["n"] += 1
        return crashing() if calls["n"] == 2 else real(*a, **kw)

    monkeypatch.setattr(batch_mod, "_project_batch", crash_second)
    with pytest.raises(KeyboardInterrupt):
        run(env, "three", models_paths=models, threshold=0.05, batch_size=3)
    monkeypatch.setattr(batch_mod, "_project_batch", real)
    run(env, "three", models_paths=models, threshold=0.05, batch_size=3)

    def decisions(case):
        store = CaseStore.open(env / case)
        names = {m["file_sha256"]: m["name"] for m in store.manifest["models"]}
        by_input = {}
        for r in store.results(load=False):
            by_input.setdefault(r.input_sha256, []).append(r)
        return {k: attribute_records(v, names)["decision"] for k, v in by_input.items()}

    a, b = decisions("one"), decisions("three")
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        for name in ("g", "g2"):
            assert a[k]["scores"][name]["distance"] == pytest.approx(b[k]["scores"][name]["distance"], abs=1e-6)
        assert (a[k]["verdict"], a[k]["best"], a[k]["runner_up"]) == (b[k]["verdict"], b[k]["best"], b[k]["runner_up"])


def _rank_main(rank, world_size, env, port):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    try:
        run_batch([env / "imgs"], [env / "g.pt"], env / "dist", SETTINGS, mse_distance, batch_size=2, rank=rank,
                  world_size=world_size)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_match_a_single_process(env):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_rank_main, args=(2, env, port), nprocs=2, join=True)
    run(env, "single")
    dist_store, single = CaseStore.open(env / "dist"), CaseStore.open(env / "single")
    ranks = {f.name.split("-")[1] for f in dist_store.batch_files()}
    assert ranks == {"r000", "r001"}
    a, b = distances(dist_store), distances(single)
    assert a.keys() == b.keys() and len(a) == 6
    assert all(abs(a[k] - b[k]) < 1e-4 for k in a)
    assert sorted(dist_store.manifest["batches"]) == [p.name for p in dist_store.batch_files()]
    assert dist_store.manifest["runs"][-1]["finished"] is not None
    groups = all_groups(dist_store)
    assert len(groups) == len(set(groups))
    json.dumps(dist_store.manifest)


def test_calibration_made_with_other_settings_is_warned_about(env):
    from detector.calibration import record_from_distances
    from detector.calibration_store import store_calibration

    record = record_from_distances([0.1, 0.2], [0.5, 0.6], target_fpr=0.0).to_dict()
    record["settings"] = {"projector": ProjectorSettings(steps=4, w_avg_samples=256, alpha=10.0).to_dict()}
    store_calibration(record, env / "g.pt")
    s = run(env, "case")
    assert len(s.warnings) == 1 and "g.pt was calibrated with other projector settings (alpha)" in s.warnings[0]
    assert run(env, "case2", threshold=0.2).warnings == []


def test_a_reversed_calibration_is_warned_about(env):
    """A calibration whose real images came back closer than the generated ones (AUC < 0.5) makes every verdict
    suspect: the batch says so, unless the user set the threshold."""
    from detector.calibration import record_from_distances
    from detector.calibration_store import store_calibration

    record = record_from_distances([0.5, 0.6], [0.1, 0.2], target_fpr=0.0).to_dict()
    record["settings"] = {"projector": ProjectorSettings(steps=4, w_avg_samples=256).to_dict()}
    store_calibration(record, env / "g.pt")
    s = run(env, "case")
    assert len(s.warnings) == 1 and s.warnings[0].startswith("g.pt: calibration AUC 0.000 < 0.5")
    assert run(env, "case2", threshold=0.2).warnings == []


# ----------------------------------------------------------------------------------------------------------------
# Damaged batch files and the case lock (issue 25)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "garbage"])
def test_a_damaged_batch_file_is_quarantined_and_its_images_projected_again(env, damage):
    run(env, "case")
    store = CaseStore.open(env / "case")
    before = distances(store)
    victim = store.batch_files()[1]
    with h5py.File(victim, "r") as h:
        lost = {(i, m) for i in h for m in h[i]}
    data = bytearray(victim.read_bytes())
    if damage == "truncate":  # a partial copy
        data = data[:len(data) // 2]
    elif damage == "bitflip":  # bit-rot somewhere in the stored arrays: caught by the recorded sha256
        data[len(data) - 100] ^= 0x10
    else:
        data = bytearray(b"not hdf5 at all")
    victim.write_bytes(bytes(data))

    reading = CaseStore.open(env / "case")  # read-only users skip it and say why, without a traceback
    assert set(reading.damaged()) == {victim.name}
    assert victim not in reading.batch_files()
    assert set(distances(reading)) == set(before) - lost
    from cases.report import build_report

    doc, _ = build_report(reading)
    assert doc["summary"]["pending"] == 2
    assert doc["provenance"]["damaged_batches"][0]["file"] == f"results/{victim.name}"

    s = run(env, "case")
    assert [q["file"] for q in s.quarantined] == [f"results/{victim.name}"]
    assert s.processed == len({i for i, _ in lost}) == 2
    assert not victim.exists() and (env / "case" / "quarantine" / victim.name).exists()
    store = CaseStore.open(env / "case")
    assert store.damaged() == {}
    assert store.manifest["quarantined"][0]["moved_to"] == f"quarantine/{victim.name}"
    assert victim.name not in store.manifest["batches"]
    after = distances(store)
    assert set(after) == set(before)
    for k in before:  # the same per-image seeds: the re-projected images give the same distances
        assert after[k] == pytest.approx(before[k], abs=1e-6)
    assert len(all_groups(store)) == len(before)  # every input once
    from cases.report import build_report

    doc, _ = build_report(store)  # the report is complete again and names the quarantined file
    assert (doc["summary"]["processed"], doc["summary"]["pending"]) == (6, 0)
    assert doc["provenance"]["damaged_batches"] == []
    assert doc["provenance"]["quarantined"][0]["file"] == f"results/{victim.name}"


def test_a_second_batch_on_a_locked_case_is_refused_naming_the_holder(env):
    from stylegan.util.locking import LockedError, exclusive_lock

    run(env, "case")
    with exclusive_lock(env / "case" / ".lock", "case folder"):
        with pytest.raises(LockedError, match=rf"in use by pid {os.getpid()} "):
            run(env, "case")
    s = run(env, "case")  # released: the case works again
    assert s.already_done == 6


def test_leftover_temporaries_of_a_killed_run_are_removed(env):
    run(env, "case")
    results = env / "case" / "results"
    (results / ".batch-r000-abc123.tmp").write_bytes(b"half a batch")
    (env / "case" / ".manifest.json.xyz.tmp").write_text("{")
    run(env, "case")
    assert not list((env / "case").rglob("*.tmp"))


def test_trajectories_are_recorded_without_changing_results(env):
    """`detect batch --trajectory N` keeps each image's clean distance every N steps; the distances are the ones a
    run without it gives (bit for bit), so a full run's trajectories can be studied for early decisions."""
    from detector.cli.options import projector_settings

    s = projector_settings(4, trajectory=1)
    assert (s.clean_checkpoints, s.early_stop_start, s.early_stop_every, s.early_stop) == (True, 0.25, 1, None)
    run_batch([env / "imgs"], [env / "g.pt"], env / "plain", SETTINGS, mse_distance, batch_size=2)
    traced = ProjectorSettings(**{**SETTINGS.to_dict(), "clean_checkpoints": True, "early_stop_start": 0.25,
                                  "early_stop_every": 1, "betas": tuple(SETTINGS.betas)})
    run_batch([env / "imgs"], [env / "g.pt"], env / "traced", traced, mse_distance, batch_size=2)
    plain = {r.key: r for r in CaseStore.open(env / "plain").results()}
    recs = {r.key: r for r in CaseStore.open(env / "traced").results()}
    assert plain.keys() == recs.keys() and len(recs) == 6
    for k, r in recs.items():
        assert r.distance == plain[k].distance
        assert [step for step, _ in r.result.clean_trace] == [1, 2, 3]
        assert plain[k].result.clean_trace == ()


def test_a_file_damaged_inside_its_arrays_without_a_recorded_hash_is_found_and_quarantined(env):
    """Cases made before batch files' sha256 were kept: damage the structural check cannot see (a stored array
    unreadable) is found by reading the file whole, under the lock, before the run; its images are re-projected."""
    run(env, "case")
    store = CaseStore.open(env / "case")
    victim = store.batch_files()[0]
    with h5py.File(victim, "r+") as h:  # an array replaced by one of another kind: the record no longer loads
        isha = sorted(h.keys())[0]
        g = h[isha][sorted(h[isha].keys())[0]]
        del g["target"]
        g.create_dataset("target", data=np.array([b"garbage"]))
    manifest = json.loads((env / "case" / "manifest.json").read_text())
    manifest.pop("batch_sha256")
    (env / "case" / "manifest.json").write_text(json.dumps(manifest))
    assert CaseStore.open(env / "case").damaged() == {}  # the structure is intact
    reading = CaseStore.open(env / "case")
    assert len(list(reading.results())) == 4 and victim.name in reading.damaged()  # a full read skips it, says so
    s = run(env, "case")
    assert [q["file"] for q in s.quarantined] == [f"results/{victim.name}"] and s.processed == 2
    assert len(list(CaseStore.open(env / "case").results())) == 6


@pytest.mark.parametrize("old, new, hint", [
    ({"lr": 0.1}, {}, "resume with --method appd"),
    ({}, {"second_look": True}, "resume with --no-second-look"),
])
def test_a_case_made_before_a_default_changed_is_refused_with_how_to_resume(tmp_path, old, new, hint):
    """A case whose settings differ from today's only by a default that changed since is refused, and the message
    says which option resumes it; any other difference gets no such hint."""
    base = ProjectorSettings(steps=3).to_dict()
    models = [{"path": "g.pt", "file_sha256": "0" * 64}]
    CaseStore.create(tmp_path / "case", settings={**base, **old}, seed=0, models=models)
    store = CaseStore.open(tmp_path / "case")
    with pytest.raises(CaseError, match=hint):
        store.check_compatible(settings={**base, **new}, seed=0, models=models)
    with pytest.raises(CaseError) as other:
        store.check_compatible(settings={**base, **new, "steps": 4}, seed=0, models=models)
    assert "resume with" not in str(other.value)
