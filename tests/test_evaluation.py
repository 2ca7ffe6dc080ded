"""Evaluation of a checkpoint on real HORM molecules: files, printed Table 1, and metric values."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script, read_horm_entries, write_tiny_checkpoint
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hip import HIPEquiformerV2, collate_molecules, load_checkpoint
from hip.data import HormDataModule
from hip.data.horm import close_shards
from hip.evaluation import CSV_METRICS, ID_COLUMNS, eval_settings, evaluate_checkpoint, select_molecules
from hip.metrics import (
    METRIC_COLUMNS,
    TABLE1_COLUMNS,
    TABLE3_COLUMNS,
    TABLE9_COLUMNS,
    TIME_COLUMN,
    TIME_WITH_GRAPHS_COLUMN,
)
from hip.model.autodiff import autodiff_hessian
from hip.plots import ParitySampler

ROOT = Path(__file__).resolve().parents[1]
MAE = METRIC_COLUMNS["hessian_mae"]


def settings(**overrides) -> dict:
    """configs/eval/default.yaml's settings (their one home), checked, with ``overrides``."""
    return eval_settings(OmegaConf.load(ROOT / "configs" / "eval" / "default.yaml")) | overrides


#: Four of the smallest sample molecules (8, 9, 9 and 9 atoms): AD costs 3·max(N) backward rows per batch.
INDICES = [83, 41, 82, 85]


def datamodule(shard: Path, model: HIPEquiformerV2) -> HormDataModule:
    """Validation split of INDICES in batches of 2, graphs at the model's settings."""
    return HormDataModule(shard, val=shard, batch_size=2, val_indices=INDICES, exclude_elements=(),
                          cutoff=model.max_radius, max_neighbors=model.max_neighbors,
                          cutoff_hessian=model.cutoff_hessian, cache_dir=None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model in our checkpoint format (the one train.py's ModelCheckpoint writes)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def evaluated(checkpoint, horm_sample_path, tmp_path_factory):
    """Evaluate 4 molecules (loader batches of 2, evaluated one by one), HIP and AD, no warm-up:
    (output dir, printed text, results)."""
    out = tmp_path_factory.mktemp("eval")
    stdout = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(stdout):
        model = load_checkpoint(checkpoint)
        results = evaluate_checkpoint(checkpoint, datamodule(horm_sample_path, model), out,
                                      **settings(autodiff_chunk_size=None, warmup_molecules=0))
    close_shards()  # the tests below read the shard directly
    return out, stdout.getvalue(), results


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "per_molecule.csv").open() as f:
        return list(csv.DictReader(f))


def test_files_table_and_rows(evaluated, checkpoint, horm_sample_path):
    out, printed, results = evaluated
    document = json.loads((out / "metrics.json").read_text())
    assert list(document["methods"]) == ["HIP", "AD"] == list(results)
    for method, aggregate in document["methods"].items():
        assert set(TABLE1_COLUMNS) | set(TABLE3_COLUMNS) | set(TABLE9_COLUMNS) <= set(aggregate), method
        assert aggregate["Molecules [count]"] == 4 and aggregate[TIME_WITH_GRAPHS_COLUMN] > aggregate[TIME_COLUMN] > 0
        assert aggregate[MAE] == pytest.approx(results[method][MAE])
    energy = "Energy MAE [eV]"
    assert energy in document["methods"]["HIP"] and energy not in document["methods"]["AD"]
    meta = document["metadata"]
    assert meta["checkpoint"] == str(checkpoint.resolve()) and meta["dataset"] == str(horm_sample_path)
    assert meta["num_molecules"] == 4 and meta["device"] == "cpu" and meta["split"] == "val"
    assert meta["batch_size"] == 1 and meta["negative_eigenvalue_threshold [eV/Å²/amu]"] == -1e-6

    rows = read_rows(out)
    assert list(rows[0]) == [*ID_COLUMNS, *CSV_METRICS]
    assert len(rows) == 8
    for method in ("HIP", "AD"):
        mine = [r for r in rows if r["method"] == method]
        assert [int(r["dataset_idx"]) for r in mine] == INDICES
        # the aggregate is the mean of the per-molecule values; Table 3's accuracy the share of equal counts
        assert np.mean([float(r["hessian_mae"]) for r in mine]) == pytest.approx(results[method][MAE])
        # the time incl. graphs is the graph construction timed just before the model call, plus that call
        for r in mine:
            assert float(r["time_incl_graphs_ms"]) == pytest.approx(float(r["graph_ms"]) + float(r["time_ms"]))
        assert np.mean([float(r["time_incl_graphs_ms"]) for r in mine]) == pytest.approx(
            results[method][TIME_WITH_GRAPHS_COLUMN])
        agree = np.mean([float(r["n_neg_pred"]) == float(r["n_neg_true"]) for r in mine])
        assert results[method]["Extremum accuracy [%]"] == pytest.approx(100 * agree)
    assert all(r["energy_ae"] == "" for r in rows if r["method"] == "AD")

    for plot in ("hessian_parity.png", "hessian_mae_vs_natoms.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("Method"))
    assert "Hessian MAE [eV/Å²]" in header and "Time [ms]" in header and "Time incl. graphs [ms]" in header
    assert any(line.startswith("HIP ") for line in lines) and any(line.startswith("AD ") for line in lines)
    assert "raw eigenvalue MAE [eV/Å²]" in header and "Eckart λ1 MAE [eV/Å²/amu]" in header
    titles = [line.split(":")[0] for line in lines if line.startswith("Table")]
    assert titles == ["Table 1", "Table 3", "Table 9"]  # printed; Table 6 only in tables.txt
    assert any("TS TPR [%]" in line for line in lines) and any("Minima correct [%]" in line for line in lines)
    tables = (out / "tables.txt").read_text()
    assert tables.startswith("Table 1") and "Table 6" in tables


def test_per_molecule_mae_matches_numpy(evaluated, checkpoint):
    """The CSV's Hessian MAE of one molecule against the model rerun alone and the raw LMDB label.

    The model's edge frames carry a random roll, so a rerun differs by float32 noise (measured: MAE
    reruns agree to 1e-9 relative)."""
    out, _, _ = evaluated
    rows = {(r["method"], int(r["dataset_idx"])): r for r in read_rows(out)}
    idx = INDICES[-1]  # second batch
    (entry,) = read_horm_entries([idx])
    n = int(entry.pos.shape[0])
    assert int(rows["HIP", idx]["natoms"]) == n
    true = entry.hessian.numpy().astype(np.float64).reshape(3 * n, 3 * n)
    model = load_checkpoint(checkpoint)
    batch = collate_molecules([(entry.charges.long(), entry.pos.float())], model.graph_builder())
    with torch.no_grad():
        hip = model(batch)["hessian"].numpy().astype(np.float64).reshape(3 * n, 3 * n)
    ad = autodiff_hessian(model, batch, chunk_size=None).numpy().astype(np.float64).reshape(3 * n, 3 * n)
    for method, pred in (("HIP", hip), ("AD", ad)):
        expected = np.abs(pred - true).mean()
        assert float(rows[method, idx]["hessian_mae"]) == pytest.approx(expected, rel=1e-4), method
    # the tolerance separates the methods: a mix-up of HIP and AD would fail
    assert abs(np.abs(hip - true).mean() - np.abs(ad - true).mean()) > 1e-3 * np.abs(hip - true).mean()


def test_max_molecules_hip_only_no_plots(checkpoint, horm_sample_path, tmp_path):
    """max_molecules draws the seeded subset; a model passed in is used; after 2 warm-up passes every
    molecule gets exactly one forward pass of batch size 1."""
    model = load_checkpoint(checkpoint)
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(int(args[0].num_graphs)))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        results = evaluate_checkpoint(None, datamodule(horm_sample_path, model), tmp_path, model=model,
                                      **settings(autodiff=False, max_molecules=3, plots=False, subset_seed=3,
                                                 warmup_molecules=2))
    close_shards()
    assert calls == [1] * (2 + 3)
    assert list(results) == ["HIP"] and results["HIP"]["Molecules [count]"] == 3
    rows = read_rows(tmp_path)
    expected = [INDICES[i] for i in select_molecules(len(INDICES), 3, seed=3)]
    assert [int(r["dataset_idx"]) for r in rows] == expected and {r["method"] for r in rows} == {"HIP"}
    assert not list(tmp_path.glob("*.png"))
    assert not any(line.startswith("AD ") for line in printed.getvalue().splitlines())


def test_subset_is_seeded_uniform_and_without_repetition():
    first = select_molecules(1000, 100, seed=42)
    assert first == select_molecules(1000, 100, seed=42)  # the same seed, the same molecules
    assert first != select_molecules(1000, 100, seed=43)
    assert first == sorted(set(first)) and len(first) == 100 and 0 <= first[0] and first[-1] < 1000
    assert select_molecules(5, None, seed=0) == select_molecules(5, 9, seed=0) == [0, 1, 2, 3, 4]
    # each of 10 molecules is drawn with probability K/n = 0.3 (binomial s.d. over 2000 draws: 0.010)
    counts = np.bincount(np.concatenate([select_molecules(10, 3, seed=s) for s in range(2000)]), minlength=10)
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.04)
    with pytest.raises(ValueError, match="max_molecules"):
        select_molecules(10, 0, seed=0)


def test_split_without_data_is_an_error(checkpoint, horm_sample_path, tmp_path):
    model = load_checkpoint(checkpoint)
    data = datamodule(horm_sample_path, model)
    with pytest.raises(ValueError, match="no test data"):
        evaluate_checkpoint(checkpoint, data, tmp_path, model=model, **settings(split="test"))
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate_checkpoint(checkpoint, data, tmp_path, model=model, **settings(split="valid"))
    close_shards()


def test_parity_sampler_caps_points_and_keeps_methods_aligned():
    sampler = ParitySampler(max_points=1000, seed=1)
    for start in range(0, 10_000, 700):
        values = torch.arange(start, start + 700, dtype=torch.float32)
        sampler.add(values, {"HIP": values + 0.5, "AD": -values})
    points = sampler.points()
    assert 250 < len(sampler) <= 1000 and set(points) == {"DFT", "HIP", "AD"}
    torch.testing.assert_close(points["HIP"], points["DFT"] + 0.5)
    torch.testing.assert_close(points["AD"], -points["DFT"])
    assert points["DFT"].unique().numel() == len(sampler)  # no entry drawn twice
    assert points["DFT"].min() < 2000 and points["DFT"].max() > 8000  # spread over all batches


def test_eval_py_hydra_config(checkpoint, tmp_path):
    """eval.py's config composes with data=horm_sample and runs; a missing checkpoint says so."""
    script = load_script("eval", ROOT)
    overrides = [f"paths.root_dir={ROOT}", f"paths.output_dir={tmp_path}", "data=horm_sample",
                 "data.batch_size=2", "eval.max_molecules=2", "eval.autodiff=false", "eval.plots=false"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("eval", overrides=[f"ckpt_path={checkpoint}", *overrides])
        missing = compose("eval", overrides=[f"ckpt_path={tmp_path / 'nope.ckpt'}", *overrides])
    with contextlib.redirect_stdout(io.StringIO()):
        results = script.run(cfg)
    close_shards()
    assert results["HIP"]["Molecules [count]"] == 2
    # horm_sample's val split is raw indices 80…99; two of them drawn with the default seed 42
    assert cfg.eval.subset_seed == 42 and cfg.eval.negative_eigenvalue_threshold == -1e-6
    assert [int(r["dataset_idx"]) for r in read_rows(tmp_path)] == [80 + i for i in select_molecules(20, 2, 42)]
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        script.run(missing)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("device", "gpu", r"eval\.device='gpu' is not a device: use 'cpu', 'cuda'"),
    ("max_molecules", "abc", r"eval\.max_molecules='abc': expected an integer or null"),
    ("autodiff", "yes", r"eval\.autodiff='yes': expected true or false"),
    ("warmup_molecules", -1, r"eval\.warmup_molecules=-1 must be ≥ 0"),
    ("split", "valid", r"eval\.split='valid': use one of"),
])
def test_bad_eval_settings_name_the_option(key, value, message):
    config = OmegaConf.load(ROOT / "configs" / "eval" / "default.yaml")
    config[key] = value
    with pytest.raises(ValueError, match=message):
        eval_settings(config)
    with pytest.raises(ValueError, match=r"eval: expected the keys .*'subset_seed'"):
        eval_settings({k: v for k, v in config.items() if k != "subset_seed"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match=r"eval\.device=cuda: CUDA is not available"):
        eval_settings(dict(OmegaConf.load(ROOT / "configs" / "eval" / "default.yaml")) | {"device": "cuda"})


def test_eval_py_bad_option_is_one_line(tmp_path):
    """A user's bad option ends eval.py's entry point with one line naming it (SystemExit, status 1)."""
    main = load_script("eval", ROOT).main.__wrapped__  # the function under @hydra.main
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        for override, message in (("eval.device=gpu", "eval.py: eval.device='gpu' is not a device: use 'cpu'"),
                                  ("data.batch_size=abc", "eval.py: data.batch_size='abc': expected an integer")):
            cfg = compose("eval", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={tmp_path}", override])
            with pytest.raises(SystemExit) as error:
                main(cfg)
            assert str(error.value).startswith(message) and "\n" not in str(error.value)
